r"""LayerGCN: layer-refined graph convolution for collaborative filtering.

Zhou et al., "Layer-refined Graph Convolutional Networks for Recommendation", ICDE 2023, as
MMRec implements it (``src/models/layergcn.py`` of enoche/MMRec); an ID-only model (no item
features), also the backbone of the alternative teacher in GUIDER's code.

**Propagation.** From the ego embeddings :math:`E^{(0)} = [E_u; E_i]`, each layer propagates the
previous *refined* layer on the normalised user–item graph and rescales every node by its
cosine to its ego embedding (:func:`~recbole_mm.model.layers.layer_refined_propagate`):

.. math:: E^{(l)} = \mathrm{diag}\big(\cos(\hat A E^{(l-1)}, E^{(0)})\big)\, \hat A E^{(l-1)},
          \qquad E = \sum_{l=1}^{L} E^{(l)}

(the ego layer itself is not in the sum).

**Edge dropout while training** (``dropout`` = share of the train edges left out, drawn again
every epoch, kept subgraph re-normalised; evaluation uses the full graph). MMRec alternates two
draws, epoch by epoch, starting with the first: *degree-sensitive* (probability
:math:`\propto 1/\sqrt{d_u d_i}`, FREEDOM's :class:`~recbole_mm.data.graphs.DegreeSensitiveEdgeSampler`)
and *uniform*. ``edge_pruning``: ``alternate`` (MMRec), ``degree`` or ``random``.

**Loss** (MMRec's): the *sum* over the batch of :math:`-\log\sigma(s^+ - s^-)` plus
``reg_weight`` · ½ Σ of the squared ego rows of the batch's users, positive and negative items.
"""
import torch
import torch.nn as nn

from recbole_mm.data.graphs import bipartite_adjacency
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import FrozenSparse, layer_refined_propagate
from recbole_mm.options import EDGE_PRUNINGS  # noqa: F401  (edge_pruning's values, checked by the config)


class LayerGCN(MultiModalRecommender):
    loss_reduction = "sum"  # MMRec's: the batch's BPR terms and squared ego rows, summed

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.edge_pruning = config["edge_pruning"]
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, self.embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, self.embedding_size)))
        self.setup_edge_pruning(config["dropout"])
        self.epochs_drawn = 0

    def draws_degree_sensitive(self):
        """Whether this epoch's draw is the degree-sensitive one (else uniform)."""
        if self.edge_pruning == "alternate":
            return self.epochs_drawn % 2 == 0
        return self.edge_pruning == "degree"

    def resample_edges(self):
        """This epoch's kept train edges (degree-sensitive or uniform), re-normalised."""
        sampler = self.edge_sampler
        if sampler is None:
            return
        if self.draws_degree_sensitive():
            kept = sampler.sample_edges()
        else:
            kept = torch.randperm(len(sampler.users), device=sampler.users.device)[:sampler.n_keep]
        self.epochs_drawn += 1
        self.train_adjacency = FrozenSparse(
            bipartite_adjacency(sampler.users[kept], sampler.items[kept], self.n_users, self.n_items), symmetric=True)

    def pre_epoch_processing(self):
        self.resample_edges()

    def forward(self):
        ego = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        nodes = layer_refined_propagate(self.user_item_adjacency(), ego, self.n_layers, include_ego=False)
        return torch.split(nodes, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        user_all, item_all = self.forward()
        users, pos, neg = interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        mean_bpr, _ = self.bpr_on_batch(interaction, user_all, item_all)
        squares = (self.user_embedding[users].square().sum() + self.item_embedding[pos].square().sum()
                   + self.item_embedding[neg].square().sum())
        return mean_bpr * len(users) + self.reg_weight * 0.5 * squares
