r"""MMGCN: multi-modal graph convolution network for personalised recommendation of micro-video.

Wei et al., ACM MM 2019, as MMRec implements it (``src/models/mmgcn.py`` of enoche/MMRec).

One GCN per modality m over the bidirectional user–item train graph. Its layer-0 nodes are
:math:`x^{(0)} = \mathrm{rownorm}([P_m ; \phi_m(F_m)])`: a free user preference table
:math:`P_m` (U x w_m) stacked on the items' features, projected by a bias-carrying linear map
:math:`\phi_m` to ``modality_latent_dim[m]`` when that is set (MMRec: image 4096 -> 256, no
activation) and taken raw otherwise (MMRec: text, 384-d). Each of the L = ``n_layers``
layers (LeakyReLU :math:`\sigma`, :math:`\mathcal N(t)` the neighbours of node t):

.. math::

    h_t &= \sigma\Big(\frac{1}{|\mathcal N(t)|} \sum_{s \in \mathcal N(t)} x_s W^{(l)}\Big)
        \quad\text{(mean aggregation, } W^{(l)} \text{ square)} \\
    \hat x_t &= \sigma(\mathrm{Lin}^{(l)}(x_t)) + e_t \quad\text{(} e_t \text{: the ID embedding, shared by the modalities)} \\
    x_t &\leftarrow \sigma(G^{(l)} [h_t \| \hat x_t]) \ \text{(concat)} \quad\text{or}\quad
        \sigma(G^{(l)} h_t + \hat x_t) \ \text{(} \texttt{concat: False} \text{)}

The representation of every node is the mean of the branches' layer-L outputs (d-wide); the
score is the dot product. Loss (MMRec): BPR +
:math:`\lambda [\mathrm{mean}(e_u^2) + \mathrm{mean}(e_{i^\pm}^2) + \mathrm{mean}(P_{image}^2)]`,
λ = ``reg_weight``: the ID rows of the batch's users and of its positive and negative items,
and the image branch's whole preference table (MMRec regularises no other preference).

Departures from MMRec, and its quirks:

- ``n_layers`` is honoured (MMRec builds three layers whatever it says; our default is 3).
- ``concat`` is a real boolean. MMRec sets the flag to the string ``'False'``, which is truthy,
  so its layers always concatenate: our default ``True`` reproduces that.
- ``mmgcn_frozen_quirk`` (default ``False``): MMRec keeps the ID embeddings and the preference
  tables as plain tensors, never registered with the optimiser, so they stay at their random
  initialisation. ``True`` reproduces it (they become buffers); by default they are trained.
- Evaluation scores from a fresh forward pass per evaluation (MMRec scores from the output of
  the last training batch, one optimiser step stale).
- Message passing is a sparse product with the mean adjacency :math:`D^{-1}A` (no PyG).

Initialisation as MMRec's: Xavier-normal ID embeddings, preferences, conv weights, self-linears
and first combining layer (MMRec re-initialises its PyG conv weights after their uniform reset);
PyTorch's default for the feature projection and the later combining layers. With the same
parameters, forward, loss and every gradient equal MMRec's (PyG) code to float rounding, and so
do 80 Adam steps on the same batches (checked under ``mmgcn_frozen_quirk: True``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.data.graphs import bipartite_edges, interaction_edges, mean_adjacency
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import register_table
from recbole_mm.model.loss import node_rows_l2


class MMGCNBranch(nn.Module):
    """One modality's GCN of MMGCN.

    Args:
        n_users: U.
        feature_dim: width of the modality's item features.
        embedding_dim: d, the width of every layer's output.
        n_layers: L >= 1.
        latent_dim: width of the projection of the features (and of the preferences); ``None``
            keeps the raw features.
        concat: combine ``[h ‖ x̂]`` through one linear layer (True) or add ``G h + x̂``.
        trainable_preference: ``False`` keeps the preference table at its initialisation
            (MMRec's quirk).
    """

    def __init__(self, n_users, feature_dim, embedding_dim, n_layers, latent_dim=None, concat=True,
                 trainable_preference=True):
        super().__init__()
        width = latent_dim or feature_dim
        self.concat = concat
        self.projection = nn.Linear(feature_dim, latent_dim) if latent_dim else None
        register_table(self, "preference", nn.init.xavier_normal_(torch.empty(n_users, width)), trainable_preference)
        self.conv_weights = nn.ParameterList()
        self.self_linears = nn.ModuleList()
        self.combines = nn.ModuleList()
        for layer in range(n_layers):
            size_in = width if layer == 0 else embedding_dim
            # MMRec re-initialises every conv weight Xavier-normal after PyG's uniform reset
            self.conv_weights.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(size_in, size_in))))
            self_linear = nn.Linear(size_in, embedding_dim)
            nn.init.xavier_normal_(self_linear.weight)
            self.self_linears.append(self_linear)
            combine = nn.Linear(size_in + embedding_dim if concat else size_in, embedding_dim)
            if layer == 0:  # MMRec re-initialises only the first combining layer
                nn.init.xavier_normal_(combine.weight)
            self.combines.append(combine)

    def forward(self, adjacency, item_features, id_embedding):
        """Layer-L node representations, ((U + I) x d).

        Args:
            adjacency: sparse (U + I) x (U + I) mean adjacency :math:`D^{-1}A`.
            item_features: (I x feature_dim).
            id_embedding: (U + I) x d ID embeddings.
        """
        items = self.projection(item_features) if self.projection is not None else item_features
        x = F.normalize(torch.cat([self.preference, items], dim=0), dim=1)
        for weight, self_linear, combine in zip(self.conv_weights, self.self_linears, self.combines):
            h = F.leaky_relu(torch.sparse.mm(adjacency, x @ weight))
            x_hat = F.leaky_relu(self_linear(x)) + id_embedding
            if self.concat:
                x = F.leaky_relu(combine(torch.cat([h, x_hat], dim=1)))
            else:
                x = F.leaky_relu(combine(h) + x_hat)
        return x


class MMGCN(MultiModalRecommender):
    one_modality_ok = True  # MMRec's builds only the branches whose features exist

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        self.n_layers = config["n_layers"]
        if not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise ConfigError(f"n_layers must be a positive integer, got {self.n_layers!r}")
        self.concat = config["concat"]
        if not isinstance(self.concat, bool):
            raise ConfigError(f"concat must be True or False, got {self.concat!r} "
                             "(MMRec's string 'False' is truthy: write a boolean)")
        self.frozen_quirk = bool(config["mmgcn_frozen_quirk"])
        self.reg_weight = config["reg_weight"]
        latent_dims = dict(config["modality_latent_dim"] or {})
        unknown = sorted(set(latent_dims) - set(self.modality_features) - set(config["modalities"] or []))
        if unknown:
            raise ConfigError(f"modality_latent_dim names modalities {unknown} that the model does not "
                             f"use (modalities: {list(self.modality_features)})")

        users, items = interaction_edges(self.interaction_matrix)
        sources, targets = bipartite_edges(users.to(self.device), items.to(self.device), self.n_users)
        self.adjacency = mean_adjacency(sources, targets, self.n_users + self.n_items)

        trainable = not self.frozen_quirk
        self.branches = nn.ModuleDict({
            name: MMGCNBranch(self.n_users, features.shape[1], self.embedding_size, self.n_layers,
                              latent_dims.get(name), self.concat, trainable)
            for name, features in self.modality_features.items()
        })
        id_embedding = nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, self.embedding_size))
        register_table(self, "id_embedding", id_embedding, trainable)

    def forward(self):
        nodes = torch.stack([
            branch(self.adjacency, self.modality_features[name], self.id_embedding)
            for name, branch in self.branches.items()
        ]).mean(dim=0)
        return torch.split(nodes, [self.n_users, self.n_items])

    def regularisation(self, interaction):
        """λ [mean(e_u²) + mean(e_{i±}²) + mean(P_image²)] (MMRec: the image preference only)."""
        reg = node_rows_l2(self.id_embedding, interaction, self.USER_ID, (self.ITEM_ID, self.NEG_ITEM_ID), self.n_users)
        if "image" in self.branches:
            reg = reg + (self.branches["image"].preference ** 2).mean()
        return self.reg_weight * reg

    def calculate_loss(self, interaction):
        user_all, item_all = self.forward()
        loss, _ = self.bpr_on_batch(interaction, user_all, item_all)
        return loss + self.regularisation(interaction)
