r"""LGMRec: local and global graph learning for multimodal recommendation.

Guo et al., AAAI 2024, as MMRec implements it (``src/models/lgmrec.py`` of enoche/MMRec, the
same file as the authors' georgeguo-cn/LGMRec since its July 2024 fix, see below). Notation:
U users, I items, d = ``embedding_size``, K = ``hyper_num``, R the binary (U x I) train
matrix, :math:`\hat A` the symmetric-normalised user–item adjacency (no self loops),
:math:`x_m` the frozen (I x d_m) features of modality m (``modalities``, image and text).

- **CGE** (collaborative graph embedding): LightGCN on :math:`\hat A`, mean of layers
  0..``n_ui_layers`` of the ID embeddings, :math:`E_c` ((U + I) x d); ``cf_model: mf`` keeps
  layer 0 only.
- **MGE** (modality graph embedding), per modality: items :math:`x_m W_m` (W_m: d_m x d, no
  bias, Xavier), each user the mean of its train items, then ``n_mm_layers`` steps on
  :math:`\hat A` keeping the last layer only: :math:`E_m` ((U + I) x d).
- **Local**: :math:`E_{loc} = E_c + \sum_m \mathrm{norm}(E_m)` (norm = row L2 normalisation).
- **Hypergraph**, per modality: item→hyperedge logits :math:`Z_m = x_m H_m` (H_m: d_m x K,
  Xavier), user logits :math:`R Z_m` (a sum over the user's items, not a mean); soft
  assignments along the K hyperedges :math:`\Lambda = \mathrm{GumbelSoftmax}_\tau(Z)`
  (τ = ``gumbel_temperature``, 0.2) for users (U x K) and items (I x K), then dropout with
  rate 1 − ``keep_rate`` (a fresh mask each time an assignment matrix is used).
- **HGNN**, ``n_hyper_layer`` layers from the CGE items :math:`G^0 = E_{c,I}`:
  :math:`L^l = \Lambda_I^\top G^{l-1}` (K x d), :math:`G^l = \Lambda_I L^l`; users
  :math:`\Lambda_U L^{n}`. Global view of modality m: :math:`\Gamma_m = [\Lambda_U L^n; G^n]`.
- **Representations**: :math:`E = E_{loc} + \alpha\, \mathrm{norm}(\sum_m \Gamma_m)`,
  α = ``alpha``; score :math:`e_u^\top e_i`.
- **Loss**: :math:`\mathrm{BPR}(u, i^+, i^-) + \lambda_{cl} \sum_{a<b} [\mathcal N(\Gamma_{a,U}[u],
  \Gamma_{b,U}) + \mathcal N(\Gamma_{a,I}[i^+], \Gamma_{b,I})] + \lambda_{reg} (\lVert e_u\rVert
  + \lVert e_{i^+}\rVert + \lVert e_{i^-}\rVert) / B`, where :math:`\mathcal N` is
  :func:`~recbole_mm.model.loss.table_info_nce`: the positive of the anchor's row is the same
  row of the other modality, **every** user (item) is in the denominator, summed over the batch,
  τ = ``cl_temperature`` (0.2); the norms are unsquared Frobenius norms of the batch's final
  representations (``EmbLoss``). For the two modalities [image, text] the pair sum is MMRec's
  single (image anchor, text candidates) pair; with one modality there is no contrastive term.

**Evaluation is deterministic.** In eval mode the assignments are the noise-free relaxation
:math:`\Lambda = \mathrm{softmax}(Z / \tau)` and no dropout is applied. MMRec draws fresh
Gumbel noise at every prediction (its dropout is an ``nn.Dropout``, off in eval mode):
``lgmrec_eval_noise_quirk: True`` keeps the noise on in eval mode (dropout stays off); the
evaluation cache then draws it once per evaluation, where MMRec draws it once per batch of
4096 users.

**The authors' logs** (Baby 0.1002, Sports 0.1067, Clothing 0.0830 test Recall@20, August 2023)
come from their code before its July 2024 fix, which overwrote the image users' assignments
with the Gumbel-softmax of the text users' logits and left the text users' logits without any
softmax: ``lgmrec_user_assignment_quirk: True`` reproduces that (first modality's users:
GumbelSoftmax of the second's user logits; second modality's users: the raw logits
:math:`R Z`); it needs exactly two modalities.

**Per-dataset defaults.** ``LGMRec.yaml`` ships MMRec's Baby values (n_hyper_layer 1,
hyper_num 4, keep_rate 0.5, alpha 0.3) and, in its ``dataset_defaults`` block, those MMRec's
yaml comments for Sports (1 / 4 / 0.4 / 0.6) and Clothing (2 / 64 / 0.2 / 0.2), applied when
the dataset has that name. The authors' Sports log ran n_hyper_layer 4 (n_ui_layers 2); their
current sports.yaml has n_hyper_layer 1 and n_ui_layers 4.

**Cost.** The two InfoNCE terms form (B x U) and (B x I) logits every batch: they dominate a
CPU epoch (as in MMRec).

Where this differs from MMRec: RecBole's padding item 0 is left out of the hypergraph (its
assignment row is zero, so its embedding does not feed the hyperedges) and the padding user and
item are left out of the contrastive denominators; the BPR is RecBole's ``BPRLoss`` (1e-10 inside
the log) so the denoising losses can replace it. MMRec's ``feat_embed_dim`` must equal
``embedding_size`` (E_c and E_m are added), so only the latter is read.
"""
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.data.graphs import interaction_edges
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.lattice import CF_MODELS
from recbole_mm.model.layers import FrozenSparse, propagate
from recbole_mm.model.loss import EmbLoss, table_info_nce


def hypergraph_propagate(user_assignments, item_assignments, item_embeddings, n_layers):
    r"""LGMRec's HGNN: items to hyperedges and back, ``n_layers`` times; users read the last
    layer's hyperedges.

    :math:`L^l = \Lambda_I^\top G^{l-1}`, :math:`G^l = \Lambda_I L^l` (:math:`G^0` =
    ``item_embeddings``), users :math:`\Lambda_U L^{n}`.

    Args:
        user_assignments: (U x K) tensor :math:`\Lambda_U`.
        item_assignments: (I x K) tensor :math:`\Lambda_I`.
        item_embeddings: (I x d) tensor :math:`G^0`.
        n_layers: n >= 1.

    Returns:
        (users (U x d), items (I x d)).
    """
    items = item_embeddings
    for _ in range(n_layers):
        hyperedges = item_assignments.T @ items
        items = item_assignments @ hyperedges
    return user_assignments @ hyperedges, items


def _xavier(rows, columns):
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(rows, columns)))


class LGMRec(MultiModalRecommender):
    one_modality_refusal = (
        "MMRec's forward returns the hypergraph views of both image and text (on a one-modality folder it "
        "stops with an UnboundLocalError); modalities: [image] or [text], given, runs this port's one-modality "
        "variant (no hypergraph contrast), which has no reference counterpart")
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        d = self.embedding_size
        self.cf_model = config["cf_model"]
        if self.cf_model not in CF_MODELS:
            raise ConfigError(f"cf_model must be one of {CF_MODELS}, got {self.cf_model!r}")
        if config["feat_embed_dim"] not in (None, d):
            raise ConfigError(f"LGMRec adds modality and ID embeddings: feat_embed_dim ({config['feat_embed_dim']}) "
                              f"must equal embedding_size ({d}); leave it out")
        self.n_ui_layers = config["n_ui_layers"] if self.cf_model == "lightgcn" else 0
        self.n_mm_layers = config["n_mm_layers"]
        self.n_hyper_layer = config["n_hyper_layer"]
        if not isinstance(self.n_hyper_layer, int) or self.n_hyper_layer < 1:
            raise ConfigError(f"LGMRec: n_hyper_layer must be an integer >= 1, got {self.n_hyper_layer!r}")
        self.alpha = config["alpha"]
        self.cl_weight = config["cl_weight"]
        self.reg_weight = config["reg_weight"]
        self.cl_temperature = config["cl_temperature"]
        self.gumbel_temperature = config["gumbel_temperature"]
        self.eval_noise_quirk = config["lgmrec_eval_noise_quirk"]
        self.user_assignment_quirk = config["lgmrec_user_assignment_quirk"]
        self.modality_names = list(self.modality_features)
        if self.user_assignment_quirk and len(self.modality_names) != 2:
            raise ConfigError(f"lgmrec_user_assignment_quirk needs exactly two modalities, got {self.modality_names}")

        self.user_embedding = _xavier(self.n_users, d)
        self.item_id_embedding = _xavier(self.n_items, d)
        self.features = self.feature_parameters(trainable=False)
        self.projections = nn.ParameterDict({
            name: _xavier(features.shape[1], d) for name, features in self.modality_features.items()})
        self.hyperedges = nn.ParameterDict({
            name: _xavier(features.shape[1], config["hyper_num"]) for name, features in self.modality_features.items()})
        self.assignment_dropout = nn.Dropout(p=1.0 - config["keep_rate"])
        self.reg_loss = EmbLoss()

        self.adjacency = FrozenSparse(self.normalized_adjacency(), symmetric=True)
        self.user_item_sum, self.user_item_mean = self._user_item_matrices()
        real_items = torch.ones(self.n_items, 1, device=self.device)
        real_items[0] = 0.0  # RecBole's padding item feeds no hyperedge
        self.register_buffer("real_items", real_items, persistent=False)

    def _user_item_matrices(self):
        """R (U x I, ones: a user's sum over its items) and :math:`D_U^{-1} R` (the mean), frozen."""
        users, items = (edges.to(self.device) for edges in interaction_edges(self.interaction_matrix))
        degree = torch.bincount(users, minlength=self.n_users).float()
        indices = torch.stack([users, items])
        shape = (self.n_users, self.n_items)
        total = torch.sparse_coo_tensor(indices, torch.ones_like(degree[users]), shape)
        mean = torch.sparse_coo_tensor(indices, degree[users].reciprocal(), shape)
        return FrozenSparse(total), FrozenSparse(mean)

    # ------------------------------------------------------------------ local graph
    def collaborative_embeddings(self):
        """CGE: :math:`E_c`, (U + I) x d."""
        ego = torch.cat([self.user_embedding, self.item_id_embedding])
        return propagate(self.adjacency, ego, self.n_ui_layers, combine="mean")

    def modality_embeddings(self, name):
        """MGE of one modality: :math:`E_m = \\hat A^{L} [D_U^{-1} R\\, x_m W_m;\\ x_m W_m]`, (U + I) x d."""
        items = self.features[name] @ self.projections[name]
        users = self.user_item_mean.mm(items)
        return propagate(self.adjacency, torch.cat([users, items]), self.n_mm_layers, combine="last")

    # ------------------------------------------------------------------ global graph
    def relaxed_assignments(self, logits):
        """Soft hyperedge assignments along the K axis: Gumbel-softmax in training (and in
        eval mode under ``lgmrec_eval_noise_quirk``), :math:`\\mathrm{softmax}(Z/\\tau)` otherwise."""
        if self.training or self.eval_noise_quirk:
            return F.gumbel_softmax(logits, tau=self.gumbel_temperature, hard=False, dim=1)
        return torch.softmax(logits / self.gumbel_temperature, dim=1)

    def hyperedge_assignments(self):
        """modality -> (:math:`\\Lambda_U` (U x K), :math:`\\Lambda_I` (I x K)), before dropout."""
        logits = {}
        for name in self.modality_names:
            item_logits = self.features[name] @ self.hyperedges[name]
            logits[name] = (self.user_item_sum.mm(item_logits), item_logits)
        assignments = {name: (self.relaxed_assignments(user_logits),
                              self.relaxed_assignments(item_logits) * self.real_items)
                       for name, (user_logits, item_logits) in logits.items()}
        if self.user_assignment_quirk:  # the authors' code before July 2024 (see the module docstring)
            first, second = self.modality_names
            assignments[first] = (self.relaxed_assignments(logits[second][0]), assignments[first][1])
            assignments[second] = (logits[second][0], assignments[second][1])
        return assignments

    def global_views(self, content):
        """modality -> :math:`\\Gamma_m`, (U + I) x d, from the CGE items of ``content``."""
        views = {}
        for name, (user_assignments, item_assignments) in self.hyperedge_assignments().items():
            users, items = hypergraph_propagate(
                self.assignment_dropout(user_assignments), self.assignment_dropout(item_assignments),
                content[self.n_users:], self.n_hyper_layer)
            views[name] = torch.cat([users, items])
        return views

    # ------------------------------------------------------------------ representations and loss
    def views(self):
        """(final E ((U + I) x d), modality -> global view :math:`\\Gamma_m` ((U + I) x d))."""
        content = self.collaborative_embeddings()
        local = content + sum(F.normalize(self.modality_embeddings(name), dim=1) for name in self.modality_names)
        global_views = self.global_views(content)
        final = local + self.alpha * F.normalize(sum(global_views.values()), dim=1)
        return final, global_views

    def forward(self):
        """(users (U x d), items (I x d))."""
        final, _ = self.views()
        return torch.split(final, [self.n_users, self.n_items])

    def hypergraph_contrast(self, global_views, users, items):
        """:math:`\\sum_{a<b}` table InfoNCE of modality a's batch rows against every row of
        modality b, for the batch's users and positive items (padding rows left out)."""
        total = 0.0
        for first, second in itertools.combinations(self.modality_names, 2):
            anchor, candidates = global_views[first], global_views[second]
            total = total + table_info_nce(anchor[users], candidates[1:self.n_users], users - 1, self.cl_temperature)
            item_rows = self.n_users + items
            total = total + table_info_nce(anchor[item_rows], candidates[self.n_users + 1:], items - 1,
                                           self.cl_temperature)
        return total

    def calculate_loss(self, interaction):
        users, positives, negatives = (interaction[self.USER_ID], interaction[self.ITEM_ID],
                                       interaction[self.NEG_ITEM_ID])
        final, global_views = self.views()
        user_all, item_all = torch.split(final, [self.n_users, self.n_items])
        loss, user_e = self.bpr_on_batch(interaction, user_all, item_all)
        if self.cl_weight:
            loss = loss + self.cl_weight * self.hypergraph_contrast(global_views, users, positives)
        if self.reg_weight:
            loss = loss + self.reg_weight * self.reg_loss(user_e, item_all[positives], item_all[negatives]).squeeze()
        return loss
