r"""``denoise: damrs``: DA-MRS's preference-guided BPR denoising (Xu et al., KDD 2024) for any
pairwise model the trainer can train (:class:`~recbole_mm.model.damrs.DAMRS` is the full model).

DA-MRS weighs each BPR triple (u, i⁺, i⁻) by how far three *denoised item views* agree that u
likes i⁺. Here the views come from the student's own item vectors:

- **Item graphs** (built once per train split, with DAMRS's builders and disk cache,
  :func:`~recbole_mm.model.damrs.denoised_item_graphs`): :math:`G_t, G_v` (I x I), each item's
  ``damrs_knn_k`` most similar items among the pairs above the mean cosine in *both* the text and
  the image features, and :math:`G_s`, each item, itself and its ``damrs_behaviour_k`` items with
  the most users in common (at least ``damrs_behaviour_min_count``) in the **train** interactions.
  The dataset's 'image' and 'text' features are used whatever the student's ``modalities``.
- **Views, per batch, no gradient:** the student's (users (U x d), items (I x d)) from its
  ``forward()`` (or ``get_user_embedding`` / ``get_item_embedding``, the route of
  :func:`~recbole_mm.trainer.bod.representation_route`), and
  :math:`h_m = G_m^{L}\,\mathrm{items}` for m ∈ {text, image, behaviour}, L = ``damrs_mm_layers``.
- **Weights** (:func:`~recbole_mm.model.damrs.feedback_weights`, (B,) each, in [0, 1]):
  :math:`p_m = \sigma(e_u^\top \hat h_{m,i^+})`, :math:`n_m = \sigma(e_u^\top \hat h_{m,i^-})`,
  :math:`w^+ = \mathrm{clip}(\bar p\, e^{-2\mathrm{var}(p)}, 0, 1)`,
  :math:`w^- = \mathrm{clip}(\max_m p_m - \bar n, 0, 1)\,[\bar p < \bar n]` with :math:`\bar n`
  the mean over views and the whole batch.
- **Loss:** the student's ``BPRLoss`` becomes
  :class:`~recbole_mm.model.loss.PreferenceWeightedBPRLoss`,
  :math:`-\mathrm{mean}[w^+ \log\sigma(s^+ - s^-) + w^- \log\sigma(s^- - s^+)]` on the student's
  own scores: a positive the views doubt counts less, and one whose views all score below the
  batch's negatives is pushed *below* its negative. Unlike BOD (which scales the scores), the
  weights multiply the log terms and add the reversed term. Everything else of the student's loss
  (regularisers, contrastive terms) is unchanged.

What differs from DAMRS itself, by design: the views propagate the student's output item
vectors (DAMRS propagates its ego item IDs, and adds the views to its scores); the student's
scores are whatever its ``calculate_loss`` computes. A student that calls its BPR several times
per batch (FREEDOM: ID, text and image scores) gets the batch's weights on every call, as
``denoise: bod`` does.

**One forward per batch.** The weights are computed at the student's first BPR call of the
batch, from the first ``forward()`` its ``calculate_loss`` made (observed, never replaced: the
model's own calls run unchanged); a student whose loss does not call ``forward()`` (VBPR
projects only the batch's items; RecBole's BPR) gets one extra pass without gradient. (BOD
instead runs the forward before the loss and feeds it back; observing avoids both a wasted
forward with gradient for students like VBPR and changing what a second ``forward()`` returns.)

Refused, with a ConfigError naming the model: students trained without negatives (BM3,
SLMRec, SelfCF) or without a replaceable ``BPRLoss`` (as ``tce``/``rce``), or whose loss never calls the
``BPRLoss`` it holds (at its first batch; DAMRS and MVGAE hold none: their own pairwise losses); students without (users,
items) vectors of one width (NeuMF, CLIPMLP); untrained models (ItemKNNCBF); datasets without
both 'image' and 'text' features (the consistency mask and the views need both, as DAMRS does).
"""
import contextlib
import numbers

import torch

from recbole_mm.errors import ConfigError
from recbole_mm.files import AUTO_CACHE, resolve_cache_dir
from recbole_mm.model.damrs import denoised_item_graphs, item_views, triple_weights
from recbole_mm.model.loss import PreferenceWeightedBPRLoss, install_denoising_loss
from recbole_mm.trainer.bod import PatchedForward, checked_representations, representation_route, representations

# the keys this option reads (defaults and meaning in properties/overall.yaml; checked in config.py)
DAMRS_DENOISE_KEYS = ("damrs_knn_k", "damrs_behaviour_k", "damrs_behaviour_min_count", "damrs_mm_layers")
MODALITIES = ("image", "text")


def _negative_sampling(config):
    args = config["train_neg_sample_args"]
    return bool(args) and args.get("sample_num", 0) not in (0, "none", None)


class _ObservedForward(PatchedForward):
    """Within a ``with`` block, the first ``model.forward()`` without arguments (on the training
    graph) is kept in ``result``; every call still runs the model's forward as it would."""

    def __init__(self, model):
        super().__init__(model)
        self.result = None

    def call(self, inner, *args, **kwargs):
        output = inner(*args, **kwargs)
        if self.result is None and not args and not kwargs and not getattr(self.model, "scoring_graph", False):
            self.result = output
        return output


class DAMRSDenoiser:
    """``denoise: damrs`` in a trainer: the student's weighted BPR, the item graphs and the
    per-batch weights.

    Args:
        config: the run's config (``damrs_*`` keys, ``train_neg_sample_args``, ``cache_dir``).
        model: the student; its ``BPRLoss`` modules are replaced here.
    """

    def __init__(self, config, model):
        name = type(model).__name__
        if not _negative_sampling(config):
            raise ConfigError(f"denoise: damrs weighs each (user, positive, negative) triple of the BPR loss, but "
                              f"{name} trains without sampled negatives (train_neg_sample_args is "
                              f"{config['train_neg_sample_args']!r})")
        self.model, self.config = model, config
        self.knn_k, self.behaviour_k = config["damrs_knn_k"], config["damrs_behaviour_k"]
        self.behaviour_min_count, self.layers = config["damrs_behaviour_min_count"], config["damrs_mm_layers"]
        for key in DAMRS_DENOISE_KEYS:  # config.py checks them; a config built another way is checked here
            value = config[key]
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be an integer >= 1 for denoise: damrs, got {value!r}")
        self.route = representation_route(model, "damrs")
        with torch.no_grad():
            representations(model, self.route, "damrs")  # (users, items) of one width, or a clear refusal
        self.loss = PreferenceWeightedBPRLoss()
        install_denoising_loss(model, self.loss)
        self.graphs, self._graphs_of = None, None

    # ------------------------------------------------------------------ graphs
    def setup(self, dataset):
        """Build the three item graphs from ``dataset`` (the train split: its features and its
        interactions); once per dataset object."""
        if self._graphs_of is dataset:
            return
        features = dict(getattr(dataset, "modality_features", {}) or {})
        missing = [m for m in MODALITIES if m not in features]
        if missing:
            raise ConfigError(
                f"denoise: damrs builds its item graphs from both the 'image' and the 'text' features (an item "
                f"pair is kept where both agree), but dataset '{self.config['dataset']}' has {sorted(features)}: "
                f"{type(self.model).__name__} cannot be trained with denoise: damrs on it")
        n_items = features["image"].shape[0]
        if not 1 <= self.knn_k <= n_items - 1:
            raise ConfigError(f"damrs_knn_k must lie in [1, {n_items - 1}] (the dataset's items), got {self.knn_k}")
        setting = self.config["cache_dir"] if "cache_dir" in self.config else AUTO_CACHE
        cache_dir = resolve_cache_dir(setting, self.config["data_path"])
        device = next(self.model.parameters()).device
        self.graphs = denoised_item_graphs(features, dataset.inter_matrix(form="coo"), self.knn_k, self.behaviour_k,
                                           self.behaviour_min_count, device, cache_dir=cache_dir)
        self._graphs_of = dataset

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def weights(self, users, pos_items, neg_items, user_all=None, item_all=None):
        """(w⁺, w⁻), (B,) each, of the triples from the given representations (a fresh pass of
        the student, without gradient, when omitted)."""
        if self.graphs is None:
            raise ConfigError("denoise: damrs: the item graphs are built from the train data at the start of "
                              "training (DAMRSDenoiser.setup(train_dataset)); none were built")
        if user_all is None:
            user_all, item_all = representations(self.model, self.route, "damrs")
        views = item_views(self.graphs, item_all.detach(), self.layers)
        return triple_weights(user_all[users].detach(), views, pos_items, neg_items)

    def loss_function(self, loss_func):
        """``loss_func`` (the student's ``calculate_loss``) with each batch's weights on its BPR."""
        model = self.model

        def loss(interaction):
            users, pos_items, neg_items = (interaction[model.USER_ID], interaction[model.ITEM_ID],
                                           interaction[model.NEG_ITEM_ID])
            observed = _ObservedForward(model) if self.route == "forward" else contextlib.nullcontext()

            def batch_weights():
                output = getattr(observed, "result", None)
                if output is None:
                    return self.weights(users, pos_items, neg_items)
                output = checked_representations(model, output, self.route, "damrs")
                return self.weights(users, pos_items, neg_items, *output)

            self.loss.set_weights(batch_weights)
            try:
                with observed:
                    result = loss_func(interaction)
                if self.loss.pending is not None:
                    raise ConfigError(
                        f"{type(model).__name__}'s loss never called its BPRLoss module, so denoise: damrs has no "
                        "BPR rows to weigh" + (" (DAMRS weighs its own BPR by these weights already)"
                                               if type(model).__name__ == "DAMRS" else ""))
                return result
            finally:
                self.loss.set_weights()
        return loss


__all__ = ["DAMRSDenoiser", "DAMRS_DENOISE_KEYS"]
