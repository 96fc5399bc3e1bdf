r"""BM3: bootstrap latent representations for multi-modal recommendation.

Zhou et al., WWW 2023, as MMRec implements it (``src/models/bm3.py`` of enoche/MMRec). BM3 needs no negative items: it learns by predicting a dropout-perturbed copy of one
view from another (BYOL-style, without a momentum encoder).

- **Online embeddings**: LightGCN on the symmetric :math:`\hat A`, mean of layers
  0..``n_layers`` (ego included); items get the ID embedding added back:
  :math:`h_u = \mathrm{LGN}(u)`, :math:`h_i = \mathrm{LGN}(i) + e_i`.
- **Modality embeddings**: :math:`h_{m,i} = W_m x_{m,i} + b_m` for every modality m (``modalities``,
  text and image by default), from a trainable copy of the raw features as in MMRec
  (``trainable_features``).
- **Targets**: :math:`\tilde h = \mathrm{dropout}_p(\mathrm{sg}(h))` for users, items and each
  modality's projections (p = ``dropout``, always on while computing the loss).
- **Predictor**: one linear map :math:`P` (d -> d, Xavier-normal) shared by every view.
- **Loss** over the batch's (u, i) pairs, with :math:`c(a, b) = 1 - \cos(a, b)` averaged over
  the batch:

  .. math:: c(P h_u, \tilde h_i) + c(P h_i, \tilde h_u)
            + \lambda\, \mathrm{EmbLoss}(h_U, h_I)
            + \lambda_{cl} \sum_m [c(P h_{m,i}, \tilde h_i) + c(P h_{m,i}, \tilde h_{m,i})]

  with :math:`\mathrm{EmbLoss}` = (‖h_U‖_F + ‖h_I‖_F) / n_items over **all** users and
  items (MMRec's ``EmbLoss``, unsquared norms), λ = ``reg_weight``, λ_cl = ``cl_weight``.
- **Score**: :math:`(P h_u)^\top (P h_i)`. :meth:`forward` returns these predicted
  representations (P h_U, P h_I) in every mode, so full-sort evaluation, its cache and
  GUIDER's ``score_rows`` score as BM3 does; the loss reads the online embeddings from
  :meth:`online_embeddings` before the predictor.

**Positive-only training batches.** The class declares ``input_type = POINTWISE`` and
``use_neg_sampling = False``; ``BM3.yaml`` sets ``train_neg_sample_args: ~``, which is how
RecBole itself turns negative sampling off (``Config._set_train_neg_sample_args``; the train
loader then yields the train interactions as they are, one row per interaction). A user config
that turns negatives back on (e.g. ``properties/mmrec_baby.yaml``) is overridden with a warning
by :class:`recbole_mm.config.Config`, as MMRec's model yaml (``use_neg_sampling: False``) wins
over its dataset files. Under GUIDER the teacher draws its own negatives (see
:mod:`recbole_mm.trainer.guider`). There is no BPR to replace, so ``denoise: tce | rce | bod |
wbpr`` raise a clear error.

MMRec draws the dropout masks of the targets from torch's global generator, as here.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import propagate
from recbole_mm.model.loss import EmbLoss, cosine_loss


class BM3(MultiModalRecommender):
    one_modality_ok = True  # MMRec's builds only the branches whose features exist

    input_type = InputType.POINTWISE
    use_neg_sampling = False  # see recbole_mm.config.Config._set_train_neg_sample_args

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        d = self.embedding_size
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.cl_weight = config["cl_weight"]
        self.dropout = config["dropout"]
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"BM3: dropout must lie in [0, 1), got {self.dropout}")

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.features = self.feature_parameters(config["trainable_features"])
        self.projections = nn.ModuleDict()
        for name, features in self.modality_features.items():
            self.projections[name] = nn.Linear(features.shape[1], d)
            nn.init.xavier_normal_(self.projections[name].weight)
        self.reg_loss = EmbLoss()
        # no BPR anywhere: without the base class's BPRLoss module, denoise: tce | rce | bod
        # (which replace that module) raise a clear error instead of silently doing nothing
        del self.bpr_loss
        self.adjacency = self.normalized_adjacency()

    def online_embeddings(self):
        """(h_U (U x d), h_I (I x d)): LightGCN mean over layers 0..L, the item ID embedding
        added to the items."""
        nodes = propagate(self.adjacency, torch.cat([self.user_embedding, self.item_id_embedding]),
                          self.n_layers, combine="mean")
        users, items = torch.split(nodes, [self.n_users, self.n_items])
        return users, items + self.item_id_embedding

    def forward(self):
        """(P h_U (U x d), P h_I (I x d)): the representations BM3 scores with."""
        users, items = self.online_embeddings()
        return self.predictor(users), self.predictor(items)

    def calculate_loss(self, interaction):
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        user_all, item_all = self.online_embeddings()
        with torch.no_grad():
            user_target = F.dropout(user_all[users], self.dropout)
            item_target = F.dropout(item_all[items], self.dropout)
        loss = (cosine_loss(self.predictor(user_all[users]), item_target)
                + cosine_loss(self.predictor(item_all[items]), user_target))
        if self.reg_weight:
            loss = loss + self.reg_weight * self.reg_loss(user_all, item_all)
        if self.cl_weight:
            modal = 0.0
            for name, projection in self.projections.items():
                online = projection(self.features[name][items])
                with torch.no_grad():
                    target = F.dropout(online, self.dropout)
                predicted = self.predictor(online)
                modal = modal + cosine_loss(predicted, item_target) + cosine_loss(predicted, target)
            loss = loss + self.cl_weight * modal
        return loss
