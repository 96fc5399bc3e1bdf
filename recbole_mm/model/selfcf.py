r"""SelfCF: self-supervised collaborative filtering, the embedding-dropout variant SelfCF_ed on a
LightGCN backbone.

Zhou et al., "SelfCF: A Simple Framework for Self-supervised Collaborative Filtering", ACM TORS
2023, as MMRec implements it (``src/models/selfcfed_lgn.py`` of enoche/MMRec, model name
``SELFCFED_LGN``). ID-only (no item features), no negative items.

- **Online embeddings**: LightGCN, mean of layers 0..``n_layers``, on the normalised user–item
  graph with **random edge dropout** while training (MMRec's encoder, from BUIR): every batch
  draws a rate :math:`r \sim U[0, 1)` and keeps each stored entry of :math:`\hat A` with
  probability :math:`1 - r`, scaled by :math:`1 / (1 - r)`.
- **Targets**: :math:`\tilde h = \mathrm{dropout}_p(\mathrm{sg}(h))` of the batch's user and item
  rows (p = ``dropout``).
- **Loss** over the batch's (u, i) pairs, with a linear predictor P:

  .. math:: \tfrac12 c(P h_u, \tilde h_i) + \tfrac12 c(P h_i, \tilde h_u)
            + \lambda \cdot \tfrac12 (\lVert h_u \rVert^2 + \lVert h_i \rVert^2)

  :math:`c(a, b) = 1 - \cos(a, b)` averaged over the batch (MMRec: :math:`-\cos`, the same
  gradient), the squares summed over the batch's rows, λ = ``reg_weight``.
- **Score** (full graph, no dropout): :math:`(P h_u)^\top h_i + h_u^\top (P h_i)`, which is
  the dot product of :math:`[P h_u; h_u]` and :math:`[h_i; P h_i]`: :meth:`forward` returns these,
  so full-sort evaluation, its cache and GUIDER's ``score_rows`` score as SelfCF does.

Positive pairs only (``use_neg_sampling = False``, as BM3): ``denoise`` refuses it; under
GUIDER the teacher draws its own negatives.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import DroppedEdges, FrozenSparse, propagate
from recbole_mm.model.loss import cosine_loss


class SelfCF(MultiModalRecommender):
    input_type = InputType.POINTWISE
    use_neg_sampling = False  # see recbole_mm.config.Config._set_train_neg_sample_args
    loss_reduction = "sum"  # its averaged cosine loss is outweighed by MMRec's regulariser, a sum over the batch

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = self.embedding_size
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.dropout = config["dropout"]
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"SelfCF: dropout must lie in [0, 1), got {self.dropout}")
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.predictor = nn.Linear(d, d)
        del self.bpr_loss  # no BPR: denoise: tce | rce | bod raise a clear error
        adjacency = self.normalized_adjacency()
        self.edges = DroppedEdges(adjacency)
        self.full_adjacency = FrozenSparse(adjacency, symmetric=True)

    def dropped_adjacency(self):
        r""":math:`\hat A` with each stored entry kept with probability 1 − r, r ~ U[0, 1) drawn
        per call, the kept values scaled by 1 / (1 − r) (MMRec's ``sparse_dropout``)."""
        rate = torch.rand(1).item()
        keep = torch.rand(len(self.edges.values), device=self.edges.values.device) >= rate
        return self.edges.frozen(keep, 1.0 / (1.0 - rate))

    def online_embeddings(self, adjacency):
        """(h_U, h_I): LightGCN mean over layers 0..L on ``adjacency``."""
        nodes = propagate(adjacency, torch.cat([self.user_embedding, self.item_embedding]), self.n_layers, "mean")
        return torch.split(nodes, [self.n_users, self.n_items])

    def forward(self):
        """([P h_U; h_U] (U x 2d), [h_I; P h_I] (I x 2d)) on the full graph: their dot product is
        SelfCF's score."""
        users, items = self.online_embeddings(self.full_adjacency)
        return torch.cat([self.predictor(users), users], dim=1), torch.cat([items, self.predictor(items)], dim=1)

    def calculate_loss(self, interaction):
        user_all, item_all = self.online_embeddings(self.dropped_adjacency())
        user_e, item_e = user_all[interaction[self.USER_ID]], item_all[interaction[self.ITEM_ID]]
        with torch.no_grad():
            user_target, item_target = F.dropout(user_e, self.dropout), F.dropout(item_e, self.dropout)
        loss = 0.5 * (cosine_loss(self.predictor(user_e), item_target) + cosine_loss(self.predictor(item_e), user_target))
        return loss + self.reg_weight * 0.5 * (user_e.square().sum() + item_e.square().sum())
