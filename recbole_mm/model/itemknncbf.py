r"""ItemKNNCBF: content-based item kNN, the baseline every content model must beat.

Dacrema et al., "Are We Really Making Much Progress?", RecSys 2019, as MMRec implements it
(``src/models/itemknncbf.py`` of enoche/MMRec). Nothing is trained.

**Similarity** of items i and j from their features f (the dataset's modalities concatenated,
MMRec's ``[v; t]``, or the one that exists), shrunk:

.. math:: s_{ij} = \frac{f_i^\top f_j}{\lVert f_i \rVert \lVert f_j \rVert + \text{shrink}}

and each item keeps its ``knn_k`` most similar items (itself included): W (I x I) holds
:math:`s_{ij}` for j among i's neighbours, 0 elsewhere.

**Score** of user u for item j: :math:`\sum_{i \in \mathcal{I}_u} W_{ij}` over the user's train
items, i.e. :math:`R W`. MMRec forms the dense I x I similarity and the dense U x I score
matrix up front; here the neighbours come from the chunked top-k
(:func:`~recbole_mm.data.graphs.knn_neighbours`, no I x I tensor), W is kept as each item's
(neighbours, similarities), and a batch's scores add, for each of its users' train items, that
item's k similarities into the user's row (one ``index_put_`` of B · |I_u| · k entries: on the
Sports graph an evaluation took 9.0 s as a sparse x dense product with the history rows,
transposed, as the dense side).
"""
import torch
import torch.nn as nn

from recbole_mm.data.graphs import interaction_edges, knn_neighbours, ragged_rows
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender


class ItemKNNCBF(MultiModalRecommender):
    # MMRec's uses [v; t] when both exist, else whichever does
    one_modality_ok = True
    #: nothing to train: GUIDER has no student to distil into
    trainable = False

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        if not isinstance(config["knn_k"], int) or not 1 <= config["knn_k"] <= self.n_items:
            raise ConfigError(f"knn_k must be an integer in [1, {self.n_items}], got {config['knn_k']!r}")
        self.knn_k, self.shrink = config["knn_k"], float(config["shrink"])
        self.neighbours, self.similarities = knn_neighbours(self.concat_features(), self.knn_k, shrink=self.shrink)
        users, items = interaction_edges(self.interaction_matrix)
        order = torch.argsort(users * self.n_items + items)
        self.history_items = items[order].to(self.device)
        counts = torch.bincount(users, minlength=self.n_users)
        self.history_pointers = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(self.device)
        # RecBole's trainer steps an optimiser: one parameter that nothing changes
        self.placeholder = nn.Parameter(torch.zeros(1))

    def score_batch(self, users):
        r""":math:`R_{users} W`, (B x I): row b gets :math:`s_{ij}` at each neighbour j of each
        train item i of user b (repeats add up)."""
        rows, items = ragged_rows(self.history_pointers, self.history_items, users)
        scores = torch.zeros(len(users), self.n_items, device=users.device, dtype=self.similarities.dtype)
        scores.index_put_((rows.repeat_interleave(self.knn_k), self.neighbours[items].reshape(-1)),
                          self.similarities[items].reshape(-1), accumulate=True)
        return scores

    def calculate_loss(self, interaction):
        return self.placeholder.sum() * 0.0

    def forward(self):
        raise NotImplementedError("ItemKNNCBF scores users by their histories, not by embeddings")

    def predict(self, interaction):
        scores = self.score_batch(interaction[self.USER_ID])
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction):
        return self.score_batch(interaction[self.USER_ID]).reshape(-1)
