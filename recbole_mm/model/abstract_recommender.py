"""``MultiModalRecommender``: the base class of the plugin's models."""

from logging import getLogger

import numpy as np
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_mm.data.graphs import DegreeSensitiveEdgeSampler, item_knn_graph, normalized_adjacency
from recbole_mm.errors import ConfigError
from recbole_mm.files import AUTO_CACHE, resolve_cache_dir
from recbole_mm.model.layers import FrozenSparse
from recbole_mm.model.loss import BPRLoss


def modalities_optional(model_class, config):
    """True when the model may leave out missing ones of ``modalities``: its reference runs
    with whichever modalities exist (``one_modality_ok``) and ``modalities`` is the model's
    packaged default, not a value the user gave (a config file, the config dict, the command line).
    (Also read by :class:`recbole_mm.config.Config`, which sits above the models.)"""
    given = getattr(config, "external_config_dict", None) or {}
    # the class's own declaration: a subclass (MICRO of LATTICE, MENTOR of DRAGON) opts in itself
    return bool(vars(model_class).get("one_modality_ok", False)) and "modalities" not in given


def one_modality_refusal(model_class):
    """Why the model cannot run with one of its modalities missing (the class's own
    ``one_modality_refusal``, not inherited), as a sentence for error messages; "" when none is
    declared. (Also read by :class:`recbole_mm.config.Config`.)"""
    reason = vars(model_class).get("one_modality_refusal")
    return f" {model_class.__name__} cannot leave a modality out: {reason}." if reason else ""


class MultiModalRecommender(GeneralRecommender):
    """A RecBole ``GeneralRecommender`` with item features, graphs and an evaluation cache.

    What a subclass gets:

    - ``self.modality_features``: dict modality -> (n_items x d) float tensor on
      ``config['device']`` (row = internal item id, row 0 padding), restricted to the
      modalities named by ``config['modalities']`` (all of the dataset's when unset), in
      that order. :meth:`concat_features` joins them.
    - ``self.interaction_matrix``: the train interactions, scipy COO (n_users x n_items).
    - :meth:`normalized_adjacency` and :meth:`item_knn_graph`: the shared graph builders,
      the kNN graph cached on disk in :attr:`cache_dir` (config ``cache_dir``; by default
      ``<data_path>/<dataset>/recbole_mm_cache``, the user cache when that is read-only).

    What a subclass implements: ``forward() -> (user_embeddings, item_embeddings)`` over all
    users and items, and ``calculate_loss``. ``predict`` and ``full_sort_predict`` then score
    by the dot product of cached representations: :meth:`forward` runs once per evaluation
    (the first ``full_sort_predict`` after ``model.eval()``), and the cache is dropped as soon
    as the model changes mode, so training never sees stale embeddings. A model with another
    scoring rule overrides :meth:`score_users`. :meth:`score_rows` gives the same scores with
    gradient, outside the cache (GUIDER's distillation).

    A model whose reference ranks with the last training forward's representations offers that
    as a switch through :meth:`setup_stale_evaluation` and :meth:`remember_representations`.

    Per-epoch work goes into :meth:`pre_epoch_processing`, which
    :class:`~recbole_mm.trainer.MultiModalTrainer` calls at the start of every epoch.
    """

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.embedding_size = config["embedding_size"]
        self.modality_features = self._select_modalities(config, dataset)
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self._cache_dir, self._cache_dir_resolved = None, False
        self._eval_cache = None
        self.scoring_graph = False  # True: the full graph even in training (score_rows)
        self.bpr_loss = BPRLoss()

    #: True where the model's reference runs with whichever of its modalities exist (MMRec's
    #: FREEDOM, BM3, LATTICE, ... build only the branches whose feature files exist): missing ones
    #: of the packaged ``modalities`` are then left out with a warning, as long as one remains
    #: (``modalities`` given by the user must all exist).
    one_modality_ok = False
    #: Where the model's reference cannot run on one modality: why (one clause), appended to the
    #: error that a dataset lacking one of ``modalities`` gets; declared per class, not inherited
    #: (MICRO subclasses LATTICE, MENTOR and VLIF subclass DRAGON).
    one_modality_refusal = None

    def _select_modalities(self, config, dataset):
        available = dict(getattr(dataset, "modality_features", {}) or {})
        wanted = config["modalities"] or list(available)
        missing = [name for name in wanted if name not in available]
        if missing and modalities_optional(type(self), config) and len(missing) < len(wanted):
            wanted = [name for name in wanted if name in available]
            getLogger().warning(f"{type(self).__name__}: dataset '{config['dataset']}' has no {missing} features; "
                                f"using {wanted} only (as the reference does with one modality)")
            missing = []
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs modalities {missing} (config key modalities: {list(wanted)}), "
                f"which dataset '{config['dataset']}' does not provide (it has {sorted(available)}); "
                "set modalities to some of these, or add the files to modality_files of the dataset config."
                + one_modality_refusal(type(self))
            )
        return {name: available[name].to(self.device) for name in wanted}

    def require_features(self):
        """Raise a clear error when the dataset gave this content-based model no features."""
        if not self.modality_features:
            raise ConfigError(
                f"{type(self).__name__} needs item features, but dataset '{self.config['dataset']}' "
                "has none: set modality_files in its dataset config."
            )

    def concat_features(self, names=None):
        """Modality matrices joined along the feature axis, (n_items x Σd), in ``names`` order."""
        names = list(self.modality_features) if names is None else names
        return torch.cat([self.modality_features[name] for name in names], dim=1)

    def feature_parameters(self, trainable):
        """The modality matrices as parameters (name -> (n_items x d_m)). ``trainable`` (MMRec
        fine-tunes its feature tables, ``trainable_features``): the model's own copies, so the
        dataset keeps the features it loaded; frozen: the dataset's tensors themselves, no copy
        (a catalogue of 100k x 4480 floats is 1.7 GB)."""
        return nn.ParameterDict({
            name: nn.Parameter(matrix.clone() if trainable else matrix, requires_grad=bool(trainable))
            for name, matrix in self.modality_features.items()
        })

    # ------------------------------------------------------------------ graphs
    @property
    def cache_dir(self):
        """Folder of this dataset's derived-data cache (``None``: no disk cache), from
        ``config['cache_dir']``; resolved at first use (the fallback warning, if any, comes
        only from models that cache), see :func:`recbole_mm.files.resolve_cache_dir`."""
        if not self._cache_dir_resolved:
            setting = self.config["cache_dir"] if "cache_dir" in self.config else AUTO_CACHE
            self._cache_dir = resolve_cache_dir(setting, self.config["data_path"])
            self._cache_dir_resolved = True
        return self._cache_dir

    def normalized_adjacency(self):
        """Symmetric-normalised user–item adjacency of the train split, on the device."""
        return normalized_adjacency(self.interaction_matrix, self.n_users, self.n_items, self.device)

    def item_knn_graph(self, k, weights, weighted=False):
        """Frozen kNN item–item graph mixed over modalities (see ``data.graphs.item_knn_graph``)."""
        return item_knn_graph(self.modality_features, weights, k, weighted, cache_dir=self.cache_dir)

    def setup_edge_pruning(self, dropout):
        """Full user–item adjacency for prediction, and FREEDOM's degree-sensitive pruning
        (``dropout`` = share of edges dropped, 0 = none) for training; see
        :meth:`resample_edges` and :meth:`user_item_adjacency`. Both graphs are
        :class:`~recbole_mm.model.layers.FrozenSparse` (CSR, symmetric): :func:`propagate` on
        them back-propagates without re-transposing a COO matrix in every backward pass."""
        self.full_adjacency = FrozenSparse(self.normalized_adjacency(), symmetric=True)
        self.train_adjacency = self.full_adjacency
        self.edge_sampler = None
        if dropout:
            self.edge_sampler = DegreeSensitiveEdgeSampler(
                self.interaction_matrix, self.n_users, self.n_items, dropout, self.device
            )

    def resample_edges(self):
        """Draw this epoch's pruned training graph (a no-op without pruning)."""
        if self.edge_sampler is not None:
            self.train_adjacency = FrozenSparse(self.edge_sampler.sample(), symmetric=True)

    #: True where :meth:`forward` is a function of the parameters and of what
    #: :meth:`pre_epoch_processing` drew, so two calls within a batch give the same result;
    #: False where a call changes what the next one computes (LIRDRec records its user
    #: attention in training). GUIDER then lets one pass serve the loss and the KD rows.
    #: ``test_one_forward_serves_loss_and_kd_only_when_it_is_the_same_computation`` checks
    #: every plugin model: a new model whose forward keeps state fails it until it says False.
    pure_forward = True
    #: ``"sum"`` when :meth:`calculate_loss` mostly adds up its batch rows' terms instead of
    #: averaging them (MMRec's LayerGCN and MVGAE; SelfCF, whose summed regulariser outweighs its
    #: averaged loss): the loss then grows with the batch. GUIDER multiplies its distillation term
    #: by the batch's rows for such a student, so that ``guider_kd_weight`` weighs the two terms
    #: alike whatever the reduction (unscaled, L_KD was ~1/2048 of LayerGCN's loss and taught it
    #: nothing). ``test_a_student_declares_its_loss_reduction`` checks every plugin model: a loss
    #: that grows by more than half when its batch is repeated must say ``"sum"``.
    loss_reduction = "mean"

    def scoring_changes_forward(self):
        """Whether :meth:`forward` under :meth:`score_rows` may differ from the training
        forward: unless the forward is pure, and then only through a pruned training graph
        (``scoring_graph`` switches nothing else; DRAGON builds its own graph, which has none)."""
        pruned = getattr(self, "train_adjacency", None) is not getattr(self, "full_adjacency", None)
        return not self.pure_forward or pruned

    def user_item_adjacency(self):
        """The pruned graph while training (outside :meth:`score_rows`), the full graph otherwise."""
        return self.train_adjacency if self.training and not self.scoring_graph else self.full_adjacency

    # ------------------------------------------------------------------ training hooks
    def pre_epoch_processing(self):
        """Work to do at the start of every training epoch; nothing by default."""

    def train(self, mode=True):
        self._eval_cache = None
        return super().train(mode)

    # ------------------------------------------------------------------ scoring
    def forward(self):
        """All user and item representations: ((n_users x d), (n_items x d))."""
        raise NotImplementedError

    def setup_stale_evaluation(self, enabled, user_width, item_width):
        """MMRec's habit (``<model>_stale_eval_quirk``) of ranking with the representations of
        the last training forward, computed before that step's optimiser update. ``enabled``
        keeps them in buffers (detached, so a saved checkpoint carries the representation its
        epoch was evaluated with) of (U x ``user_width``) and (I x ``item_width``); the model's
        ``calculate_loss`` hands them over with :meth:`remember_representations`."""
        self.stale_evaluation = bool(enabled)
        if self.stale_evaluation:
            self.register_buffer("stale_users", torch.zeros(self.n_users, user_width, device=self.device))
            self.register_buffer("stale_items", torch.zeros(self.n_items, item_width, device=self.device))
            self.register_buffer("stale_ready", torch.zeros((), dtype=torch.bool, device=self.device))

    def remember_representations(self, user_all, item_all):
        """Keep this training forward's (users, items) for evaluation when
        :meth:`setup_stale_evaluation` enabled it (a no-op otherwise)."""
        if getattr(self, "stale_evaluation", False):
            with torch.no_grad():
                self.stale_users.copy_(user_all)
                self.stale_items.copy_(item_all)
                self.stale_ready.fill_(True)

    def evaluation_representations(self):
        """:meth:`forward` computed once per evaluation and reused for every user batch (with
        stale evaluation, the last training forward's representations once there is one)."""
        if getattr(self, "stale_evaluation", False) and not self.training and bool(self.stale_ready):
            return self.stale_users, self.stale_items
        if self.training:
            return self.forward()
        if self._eval_cache is None:
            with torch.no_grad():
                self._eval_cache = self.forward()
        return self._eval_cache

    def bpr_on_batch(self, interaction, user_all, item_all):
        """BPR of the batch's (u, i⁺, i⁻) triples scored by dot products of the given
        representations; returns (loss, the batch's user vectors)."""
        user_e = user_all[interaction[self.USER_ID]]
        pos = (user_e * item_all[interaction[self.ITEM_ID]]).sum(-1)
        neg = (user_e * item_all[interaction[self.NEG_ITEM_ID]]).sum(-1)
        return self.bpr_loss(pos, neg), user_e

    def score_users(self, user_embeddings, item_embeddings):
        """Scores of the given users against the given items: (B x d), (N x d) -> (B x N)."""
        return user_embeddings @ item_embeddings.T

    def score_rows(self, users, items=None):
        """Scores of ``users`` (B,) against ``items`` (N,) (every item when ``None``), (B x N),
        as evaluation scores them (on the full user–item graph, not the training-time pruned
        one) but from a fresh :meth:`forward`: never the evaluation cache, so they carry
        gradient in training. A model that can score a subset of items more cheaply than its
        whole forward pass overrides this (VBPR projects only the asked items)."""
        self.scoring_graph = True
        try:
            user_all, item_all = self.forward()
        finally:
            self.scoring_graph = False
        if items is None:
            return self.score_users(user_all[users], item_all)
        return self.score_users(user_all[users], item_all[items])

    def predict(self, interaction):
        users = interaction[self.USER_ID]
        items = interaction[self.ITEM_ID]
        user_all, item_all = self.evaluation_representations()
        return (user_all[users] * item_all[items]).sum(dim=-1)

    def full_sort_predict(self, interaction):
        """Scores of the batch users against every item, flattened as RecBole expects."""
        users = interaction[self.USER_ID]
        user_all, item_all = self.evaluation_representations()
        return self.score_users(user_all[users], item_all).reshape(-1)
