r"""MMGCF: multimodal graph collaborative filtering, a LightGCN with late-fused item content.

Spillo et al., "Multimodal Graph Collaborative Filtering for Recommendation with Graph
Convolutional Networks", UMAP 2026 (https://dl.acm.org/doi/abs/10.1145/3774935.3806158), as
MMRec implements it: ``src/models/mmgcf.py`` and ``src/configs/model/MMGCF.yaml`` of
enoche/MMRec, added by its authors in commit e775373 ("Add MMGCF (UMAP 26) (#62)").

**Collaborative part.** LightGCN on the (pruned, in training) normalised user–item graph
:math:`\hat A` ((U+I) x (U+I)), from the ego rows :math:`E^{(0)} = [E_u; E_i]` ((U+I) x d,
Xavier-initialised), mean of layers 0..L (L = ``n_ui_layers``):
:math:`[e_u; e_i] = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^l E^{(0)}`.

**Content part.** Each modality's frozen raw features :math:`x_m` (I x d_m) are projected,
:math:`f_m = W_m x_m + b_m` (I x f, f = ``feat_embed_dim``; by default ``~``, read as
``embedding_size``: MMRec's yaml sets both to 64). MMRec's ``v_feat`` and ``t_feat`` are the
``modalities`` here, in their configured order (``[image, text]`` by default, MMRec's order);
with one modality the model runs as MMRec's does without the other file.

**Late fusion of the item side** (users are LightGCN's :math:`e_u` alone). A fusion
:math:`\Phi` of a list of (I x ·) tensors is, by ``fusion_mode``: ``mean`` (element-wise
mean), ``sum`` (element-wise sum) or ``concat`` (:math:`\mathrm{Linear}([t_1 \| \dots \| t_k])`,
a layer of its own per place it is used). With M modalities, by ``weighting``:

- ``equal``: modalities first, then the ID side at equal weight,
  :math:`h_i = \Phi(e_i, \Phi(f_1, \dots, f_M))` (the inner fusion skipped when M = 1;
  concat: :math:`\mathrm{Linear}_{Mf \to f}` inside, :math:`\mathrm{Linear}_{d+f \to d}` outside);
- ``alpha``: a learned gate :math:`\alpha = \sigma(a)` (a = ``alpha_logit``, a scalar initialised at 0: α = ½),
  :math:`h_i = \Phi(\alpha e_i, (1-\alpha) f_1, \dots, (1-\alpha) f_M)`;
- ``normalized``: rows L2-normalised, the ID side scaled by M,
  :math:`h_i = \Phi(M \bar e_i, \bar f_1, \dots, \bar f_M)`, :math:`\bar x = x / \max(\|x\|, 10^{-12})`;

(``alpha`` and ``normalized`` with concat: one :math:`\mathrm{Linear}_{d+Mf \to d}`). Scores are
:math:`e_u \cdot h_i`. ``mean`` and ``sum`` add ID and content rows element-wise, so they need
``feat_embed_dim`` = ``embedding_size``: MMRec stops there with a shape error from ``torch.stack``,
ours with a ConfigError naming both keys; ``concat`` takes any width.

**Edge dropout** (``dropout`` = share of the train edges dropped, drawn again at the start of
every epoch; 0: the full graph): FREEDOM's degree-sensitive draw, edges kept with probability
:math:`\propto 1/\sqrt{d_u d_i}` and the kept subgraph re-normalised
(:class:`~recbole_mm.data.graphs.DegreeSensitiveEdgeSampler`); evaluation uses the full graph.

**Loss**: :math:`-\frac1B\sum \log\sigma(e_u\cdot h_{i^+} - e_u\cdot h_{i^-})` +
``reg_weight`` · :math:`\frac{1}{2B}(\|E_u[u]\|^2 + \|E_i[i^+]\|^2 + \|E_i[i^-]\|^2)` on the batch's
*ego* rows only (not the projections, the gate or the concat layers). The BPR term is RecBole's
``BPRLoss`` (:math:`-\log(10^{-10} + \sigma(\cdot))`, MMRec's ``F.logsigmoid`` but for margins below
-23) so that ``denoise: tce | rce | bod`` can replace it.

The executed path of MMRec's code has no plain bug to keep behind a switch, so this port has no
``mmgcf_*_quirk``. What differs, none of it in the scores: MMRec also builds the concat layers
that the chosen ``weighting`` never calls (unused, never trained); ours builds the ones used.
MMRec's yaml lists ``prod`` among the ``equal`` fusions, which its code does not have (a
``TypeError`` there); here ``fusion_mode`` is checked against
:data:`~recbole_mm.options.MMGCF_FUSION_MODES` up front. MMRec draws the kept edges with
``torch.multinomial`` (at most 2^24 edges); the shared sampler draws the same distribution
without that limit. A dataset without item features is refused (MMRec would run a plain LightGCN).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import MLP, propagate
from recbole_mm.options import MMGCF_FUSION_MODES, MMGCF_WEIGHTINGS  # noqa: F401  (checked by the config)


def fuse(tensors, mode, layer=None):
    """:math:`\\Phi`: the element-wise mean or sum of equally shaped (I x ·) tensors, or
    ``layer`` applied to their concatenation along the feature axis (``concat``)."""
    if mode == "mean":
        return torch.stack(tensors).mean(dim=0)
    if mode == "sum":
        return torch.stack(tensors).sum(dim=0)
    return layer(torch.cat(tensors, dim=1))


class MMGCF(MultiModalRecommender):
    one_modality_ok = True  # MMRec's builds the branch of each feature file that exists

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        d = self.embedding_size
        f = d if config["feat_embed_dim"] is None else config["feat_embed_dim"]
        self.n_ui_layers = config["n_ui_layers"]
        self.reg_weight = config["reg_weight"]
        self.fusion_mode = config["fusion_mode"]
        self.weighting = config["weighting"]
        if self.fusion_mode != "concat" and f != d:
            raise ConfigError(
                f"MMGCF with fusion_mode: {self.fusion_mode} adds ID and content rows element-wise, so "
                f"feat_embed_dim ({f}) must equal embedding_size ({d}); set them equal or use fusion_mode: concat"
            )
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.projections = nn.ModuleDict({
            name: MLP([features.shape[1], f]) for name, features in self.modality_features.items()
        })
        n_modalities = len(self.projections)
        self.alpha_logit = nn.Parameter(torch.zeros(())) if self.weighting == "alpha" else None
        self.modality_fusion = self.id_fusion = None  # the concat layers (Linear), where used
        if self.fusion_mode == "concat":
            if self.weighting == "equal":
                self.modality_fusion = MLP([n_modalities * f, f]) if n_modalities > 1 else None
                self.id_fusion = MLP([d + f, d])
            else:
                self.id_fusion = MLP([d + n_modalities * f, d])
        self.setup_edge_pruning(config["dropout"])

    def pre_epoch_processing(self):
        """Draw this epoch's degree-sensitive pruned training graph."""
        self.resample_edges()

    def content(self):
        """The projected features, one (I x f) tensor per modality, in configured order."""
        return [projection(self.modality_features[name]) for name, projection in self.projections.items()]

    def fuse_items(self, items):
        """:math:`h_i` from LightGCN's item rows (I x d) and the projected content, by ``weighting``."""
        content = self.content()
        if self.weighting == "alpha":
            alpha = torch.sigmoid(self.alpha_logit)
            return fuse([alpha * items] + [(1.0 - alpha) * part for part in content], self.fusion_mode, self.id_fusion)
        if self.weighting == "normalized":
            parts = [F.normalize(items, dim=1) * len(content)] + [F.normalize(part, dim=1) for part in content]
            return fuse(parts, self.fusion_mode, self.id_fusion)
        modal = fuse(content, self.fusion_mode, self.modality_fusion) if len(content) > 1 else content[0]
        return fuse([items, modal], self.fusion_mode, self.id_fusion)

    def forward(self):
        """(users (U x d), items (I x d)): the pruned graph in training, the full graph otherwise."""
        ego = torch.cat([self.user_embedding, self.item_id_embedding], dim=0)
        nodes = propagate(self.user_item_adjacency(), ego, self.n_ui_layers, combine="mean")
        users, items = torch.split(nodes, [self.n_users, self.n_items])
        return users, self.fuse_items(items)

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        loss, _ = self.bpr_on_batch(interaction, *self.forward())
        squares = (self.user_embedding[users].square().sum() + self.item_id_embedding[pos].square().sum()
                   + self.item_id_embedding[neg].square().sum())
        return loss + self.reg_weight * squares / (2 * len(users))
