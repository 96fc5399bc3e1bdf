r"""FREEDOM: freezing and denoising graph structures for multimodal recommendation.

Zhou & Shen, ACM MM 2023, as MMRec implements it (``src/models/freedom.py`` of enoche/MMRec):

- A frozen kNN item–item graph G from the raw features (k = ``knn_k`` = 10, mixed as
  ``mm_image_weight`` · G_image + (1 − w) · G_text, w = 0.1), built once (cached on disk).
  Item side: :math:`h = G^{L_{mm}} E_{item}` on the item ID embeddings (``n_mm_layers`` = 1).
- Degree-sensitive edge pruning of the user–item graph, resampled at the start of every epoch
  (``dropout`` = share of edges dropped); LightGCN (mean of layers 0..``n_ui_layers``) runs
  on the pruned graph for training and on the full graph for prediction.
- Representations: users = LightGCN users; items = LightGCN items + h.
- Loss: :math:`\mathrm{BPR}(u, i^+, i^-) + \lambda [\mathrm{BPR}(u, t'_{i^+}, t'_{i^-}) +
  \mathrm{BPR}(u, v'_{i^+}, v'_{i^-})]` with :math:`t' = W_t t`, :math:`v' = W_v v` linear
  projections of the raw features (trainable, as in MMRec: ``trainable_features``). The
  projected features enter only this auxiliary loss, not the scores. λ = ``reg_weight``.

With one of the two modalities (a text-only or image-only dataset) FREEDOM runs as MMRec's
does: the kNN graph is that modality's and the auxiliary loss has that modality's term only.

Items absent from training (cold-start) still receive h through G, so they are scored from
their features' neighbourhood.
"""
import torch
import torch.nn as nn

from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import propagate


class FREEDOM(MultiModalRecommender):
    one_modality_ok = True  # MMRec's builds only the branches whose features exist

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        present = [modality for modality in ("image", "text") if modality in self.modality_features]
        if not present:
            raise ConfigError(f"FREEDOM needs an 'image' or a 'text' modality (or both); got "
                              f"{list(self.modality_features)}")
        d = self.embedding_size
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.reg_weight = config["reg_weight"]
        image_weight = config["mm_image_weight"]

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        features = self.feature_parameters(config["trainable_features"])
        self.image_features, self.text_features = features.get("image"), features.get("text")
        self.image_projection = nn.Linear(self.image_features.shape[1], d) if "image" in present else None
        self.text_projection = nn.Linear(self.text_features.shape[1], d) if "text" in present else None

        # as MMRec: the mix of both graphs, or the one modality's graph when only one exists
        weights = {"image": image_weight, "text": 1.0 - image_weight} if len(present) == 2 else {present[0]: 1.0}
        self.item_graph = self.item_knn_graph(config["knn_k"], weights)
        self.setup_edge_pruning(config["dropout"])

    def pre_epoch_processing(self):
        """Resample the degree-sensitive pruned training graph."""
        self.resample_edges()

    def forward(self):
        """(users (U x d), items (I x d)): the pruned graph in training, the full graph otherwise."""
        item_graph_part = propagate(self.item_graph, self.item_id_embedding, self.n_mm_layers, combine="last")
        ego = torch.cat([self.user_embedding, self.item_id_embedding], dim=0)
        nodes = propagate(self.user_item_adjacency(), ego, self.n_ui_layers, combine="mean")
        users, items = torch.split(nodes, [self.n_users, self.n_items])
        return users, items + item_graph_part

    def calculate_loss(self, interaction):
        pos_items, neg_items = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        loss, user_e = self.bpr_on_batch(interaction, *self.forward())
        if self.reg_weight:
            for features, projection in ((self.text_features, self.text_projection),
                                         (self.image_features, self.image_projection)):
                if projection is None:
                    continue
                pos_f, neg_f = projection(features[pos_items]), projection(features[neg_items])
                loss = loss + self.reg_weight * self.bpr_loss((user_e * pos_f).sum(-1), (user_e * neg_f).sum(-1))
        return loss
