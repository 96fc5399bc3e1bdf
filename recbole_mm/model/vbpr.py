r"""VBPR: Visual Bayesian Personalized Ranking from implicit feedback.

He & McAuley, AAAI 2016. Paper score (Eq. 2), with the user/global offsets dropped because
BPR's pairwise difference cancels them:

.. math:: \hat y_{ui} = \gamma_u^\top \gamma_i + \theta_u^\top (E f_i) + \beta_i + \beta'^\top f_i

MMRec's version (the default here, ``vbpr_bias: False``) keeps only the two inner products,
written as one: the user vector is ``[γ_u ‖ θ_u]`` (2d) and the item vector
``[γ_i ‖ E f_i]`` (2d), with ``f_i`` the item's modality features concatenated in
``modalities`` order (MMRec: text, then image) and ``E`` a linear layer (xavier-normal weight,
zero bias). ``vbpr_bias: True`` adds the paper's item bias ``β_i`` and content bias
``β'ᵀ f_i``.

Loss: BPR + ``reg_weight`` · EmbLoss(user, positive item, negative item), EmbLoss being the
unsquared L2 norms divided by the batch size (MMRec).
"""
import torch
import torch.nn as nn

from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.loss import EmbLoss


class VBPR(MultiModalRecommender):
    one_modality_ok = True  # MMRec's builds only the branches whose features exist

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        self.reg_weight = config["reg_weight"]
        self.use_bias = bool(config["vbpr_bias"])
        d = self.embedding_size
        self.item_raw_features = self.concat_features()

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.content_projection = nn.Linear(self.item_raw_features.shape[1], d)
        nn.init.xavier_normal_(self.content_projection.weight)
        nn.init.zeros_(self.content_projection.bias)
        if self.use_bias:
            self.item_bias = nn.Parameter(torch.zeros(self.n_items))
            self.content_bias = nn.Linear(self.item_raw_features.shape[1], 1, bias=False)
            nn.init.zeros_(self.content_bias.weight)

        self.emb_loss = EmbLoss()

    def item_embeddings(self, items=None):
        """``[γ_i ‖ E f_i]`` for the given items (all when ``None``), (n x 2d)."""
        if items is None:
            return torch.cat([self.item_id_embedding, self.content_projection(self.item_raw_features)], dim=1)
        return torch.cat([self.item_id_embedding[items], self.content_projection(self.item_raw_features[items])], dim=1)

    def item_offsets(self):
        """``β_i + β'ᵀ f_i`` for every item, (n_items,); ``None`` without ``vbpr_bias``."""
        if not self.use_bias:
            return None
        return self.item_bias + self.content_bias(self.item_raw_features).squeeze(-1)

    def forward(self):
        return self.user_embedding, self.item_embeddings()

    def _scores(self, user_e, item_e, items):
        scores = (user_e * item_e).sum(dim=-1)
        offsets = self.item_offsets()
        return scores if offsets is None else scores + offsets[items]

    def calculate_loss(self, interaction):
        users = interaction[self.USER_ID]
        pos_items = interaction[self.ITEM_ID]
        neg_items = interaction[self.NEG_ITEM_ID]
        # only the batch's items are projected: the same gradients as projecting the whole
        # catalogue (MMRec), at a fraction of the cost on large catalogues
        user_e = self.user_embedding[users]
        pos_e, neg_e = self.item_embeddings(pos_items), self.item_embeddings(neg_items)
        pos_scores = self._scores(user_e, pos_e, pos_items)
        neg_scores = self._scores(user_e, neg_e, neg_items)
        return self.bpr_loss(pos_scores, neg_scores) + self.reg_weight * self.emb_loss(user_e, pos_e, neg_e)

    def predict(self, interaction):
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        if self.training:  # (GUIDER's distillation) project only the asked items, with gradient
            return self._scores(self.user_embedding[users], self.item_embeddings(items), items)
        user_all, item_all = self.evaluation_representations()
        return self._scores(user_all[users], item_all[items], items)

    def score_rows(self, users, items=None):
        """(B x N) scores with gradient, projecting only the asked items (their features
        gathered once for the projection and the content bias)."""
        if items is None:
            items = torch.arange(self.n_items, device=self.user_embedding.device)
        raw = self.item_raw_features[items]
        item_e = torch.cat([self.item_id_embedding[items], self.content_projection(raw)], dim=1)
        scores = self.user_embedding[users] @ item_e.T
        if not self.use_bias:
            return scores
        return scores + self.item_bias[items] + self.content_bias(raw).squeeze(-1)

    def score_users(self, user_embeddings, item_embeddings):
        scores = user_embeddings @ item_embeddings.T
        offsets = self.item_offsets()
        return scores if offsets is None else scores + offsets
