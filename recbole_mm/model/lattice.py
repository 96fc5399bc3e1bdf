r"""LATTICE: mining latent structures for multimedia recommendation.

Zhang et al., ACM MM 2021, as MMRec implements it (``src/models/lattice.py``; the authors' own
code base, CRIPAC-DIG/LATTICE and its successor CRIPAC-DIG/MICRO, does the same):

- **CF part** (``cf_model: lightgcn``): LightGCN on the user–item graph with one layer per
  entry of ``weight_size`` ([64, 64]: two), :math:`E = \mathrm{mean}(E^{(0)}, \dots, E^{(L)})`.
  The adjacency is the *random-walk* normalisation with self loops,
  :math:`\hat A = D^{-1}(A + I)` (the NGCF code base LATTICE grew from), not LightGCN's
  symmetric :math:`D^{-1/2} A D^{-1/2}`; ``adjacency_norm: symmetric`` switches to the latter.
  ``cf_model: mf`` uses the ID embeddings as they are.
- **Item graphs**, per modality m with raw features :math:`X_m` (trainable tables, as in MMRec:
  ``trainable_features``: the model fine-tunes its own copy, as MMRec's
  ``nn.Embedding.from_pretrained(freeze=False)`` does; the dataset's tensors stay as loaded,
  and the original graphs are built, and cached, from them):

  - original :math:`\tilde S_m`: kNN graph of the raw features, k = ``knn_k`` = 10, cosine values
    as edge weights, :math:`D^{-1/2} S D^{-1/2}` with the row degree; built once and cached;
  - learned: kNN graph of the projections :math:`X_m W_m` (``Linear(raw -> feat_embed_dim)``),
    the same way. The modalities are mixed by :math:`w = \mathrm{softmax}(\omega)` (ω one
    learnable M-vector, init 0.5): learned :math:`S = \mathrm{norm}(\sum_m w_m S_m)` (mixed, then
    normalised), original :math:`\sum_m w_m \tilde S_m` (normalised per modality, then mixed);
  - :math:`G = (1 - \lambda_c) S + \lambda_c \sum_m w_m \tilde S_m`, λc = ``lambda_coeff`` = 0.9.
- **Refresh schedule** (MMRec's, exactly): G is rebuilt *with gradient* on the first training
  batch of every epoch (:meth:`pre_epoch_processing` raises the flag), and the other batches
  reuse that graph **detached**, so W_m, ω and the raw tables get gradient from the first
  batch of an epoch only (Adam then skips them: their ``.grad`` is ``None``). Every evaluation
  rebuilds G from the current parameters. :meth:`score_rows` (GUIDER) in training uses the
  epoch's graph like the training batches.
- **Representations**: :math:`h = G^{L} E_{item}` (``n_layers`` = 1), users = CF users, items =
  CF items + :math:`h / \|h\|_2`; score = dot product.
- **Loss**: :math:`\mathrm{BPR} + \lambda (\tfrac12\|u\|^2 + \tfrac12\|i^+\|^2 + \tfrac12\|i^-\|^2)/B`
  on the batch's final representations, λ = ``reg_weight``, B = ``train_batch_size`` (MMRec
  divides by the configured size, also for the last, smaller batch).

Scale: MMRec builds every graph as a dense items x items matrix (out of memory at ~63k items);
here the kNN search runs in row chunks and only the n·k selected similarities are recomputed
with gradient (:func:`~recbole_mm.data.graphs.knn_edges`), the same values and gradients with
no items x items tensor anywhere. The padding item 0 has no edges.

MICRO (:mod:`recbole_mm.model.micro`) subclasses this model: it overrides
:meth:`build_item_graphs` (one graph per modality), :meth:`item_structure` (attention fusion)
and :meth:`auxiliary_loss` (contrastive alignment).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.data.graphs import (
    bipartite_adjacency,
    combine_graphs,
    interaction_edges,
    learned_item_graph,
    random_walk_adjacency,
)
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.layers import propagate, sparse_dense_mm
from recbole_mm.options import CF_MODELS

ADJACENCY_NORMS = {"random_walk": random_walk_adjacency, "symmetric": bipartite_adjacency}


class LATTICE(MultiModalRecommender):
    one_modality_ok = True  # MMRec's builds only the branches whose features exist

    knn_chunk_elements = 2 ** 26  # similarities per row chunk of the learned graphs' kNN search

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        d = self.embedding_size
        self.knn_k = config["knn_k"]
        self.lambda_coeff = config["lambda_coeff"]
        self.n_layers = config["n_layers"]
        self.n_ui_layers = len(config["weight_size"] or [])
        self.reg_weight = config["reg_weight"]
        self.batch_size = config["train_batch_size"]
        self.cf_model = config["cf_model"]
        if self.cf_model not in CF_MODELS:
            raise ConfigError(f"cf_model must be one of {CF_MODELS}, got {self.cf_model!r}")
        if not 0.0 <= self.lambda_coeff <= 1.0:
            raise ConfigError(f"lambda_coeff must lie in [0, 1], got {self.lambda_coeff}")
        norm = config["adjacency_norm"]
        if norm not in ADJACENCY_NORMS:
            raise ConfigError(f"adjacency_norm must be one of {sorted(ADJACENCY_NORMS)}, got {norm!r}")

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        users, items = interaction_edges(self.interaction_matrix)
        self.adjacency = ADJACENCY_NORMS[norm](users.to(self.device), items.to(self.device), self.n_users, self.n_items)

        self.raw_features = self.feature_parameters(config["trainable_features"])
        self.projections = nn.ModuleDict({
            name: nn.Linear(matrix.shape[1], config["feat_embed_dim"])
            for name, matrix in self.modality_features.items()
        })
        self.original_graphs = {
            name: self.item_knn_graph(self.knn_k, {name: 1.0}, weighted=True) for name in self.modality_features
        }
        self.build_fusion()
        self.refresh_graphs = True  # the first training batch builds the graphs (MMRec: build_item_graph)
        self.item_graphs = None     # the graphs of the latest build, detached

    def build_fusion(self):
        """The parameters that mix the modalities: ω, one weight per modality (init 0.5)."""
        self.modal_weight = nn.Parameter(torch.full((len(self.modality_features),), 0.5))

    # ------------------------------------------------------------------ item graphs
    def pre_epoch_processing(self):
        """The epoch's first training batch rebuilds the item graph(s) with gradient."""
        self.refresh_graphs = True

    def projected_features(self):
        """Each modality's projected raw features, name -> (n_items x feat_embed_dim)."""
        return {name: self.projections[name](self.raw_features[name]) for name in self.raw_features}

    def build_item_graphs(self):
        r"""LATTICE's single item graph :math:`G` from the current parameters, with gradient.

        Returns:
            list of one sparse (n_items x n_items) tensor.
        """
        weights = torch.softmax(self.modal_weight, dim=0)
        names = list(self.raw_features)
        projected = self.projected_features()
        learned = learned_item_graph([projected[name] for name in names], self.knn_k, weights, self.knn_chunk_elements)
        graphs = [learned] + [self.original_graphs[name] for name in names]
        coefficients = [1.0 - self.lambda_coeff] + [self.lambda_coeff * weights[m] for m in range(len(names))]
        return [combine_graphs(graphs, coefficients)]

    def current_item_graphs(self):
        """The item graph(s) under MMRec's schedule: rebuilt with gradient on the first training
        batch of an epoch, rebuilt (without gradient, by the caller's ``no_grad``) for every
        evaluation, and otherwise the latest build, detached."""
        if not self.training or self.refresh_graphs or self.item_graphs is None:
            graphs = self.build_item_graphs()
            self.item_graphs = [graph.detach() for graph in graphs]
            if self.training:
                self.refresh_graphs = False
            return graphs
        return self.item_graphs

    # ------------------------------------------------------------------ representations
    def propagate_items(self, graph):
        r""":math:`G^L E_{item}` (n_items x d), with gradient into G's values when it has one."""
        items = self.item_id_embedding
        for _ in range(self.n_layers):
            items = sparse_dense_mm(graph, items)
        return items

    def item_structure(self, graphs):
        r""":math:`h = G^L E_{item}` (n_items x d), and the parts :meth:`auxiliary_loss` needs
        (none here)."""
        return self.propagate_items(graphs[0]), None

    def collaborative_embeddings(self):
        """CF users (U x d) and items (I x d): LightGCN on :attr:`adjacency` or plain MF."""
        if self.cf_model == "mf":
            return self.user_embedding, self.item_id_embedding
        ego = torch.cat([self.user_embedding, self.item_id_embedding], dim=0)
        nodes = propagate(self.adjacency, ego, self.n_ui_layers, combine="mean")
        return torch.split(nodes, [self.n_users, self.n_items])

    def forward_parts(self):
        """(users (U x d), items (I x d), h (I x d), auxiliary parts) of one forward pass."""
        h, parts = self.item_structure(self.current_item_graphs())
        users, items = self.collaborative_embeddings()
        return users, items + F.normalize(h, dim=1), h, parts

    def forward(self):
        """(users (U x d), items (I x d))."""
        users, items, _, _ = self.forward_parts()
        return users, items

    # ------------------------------------------------------------------ loss
    def auxiliary_loss(self, h, parts):
        """Loss terms beyond BPR and L2 (MICRO's contrastive alignment); none here."""
        return 0.0

    def calculate_loss(self, interaction):
        user_all, item_all, h, parts = self.forward_parts()
        loss, user_e = self.bpr_on_batch(interaction, user_all, item_all)
        pos_e, neg_e = item_all[interaction[self.ITEM_ID]], item_all[interaction[self.NEG_ITEM_ID]]
        l2 = 0.5 * (user_e.square().sum() + pos_e.square().sum() + neg_e.square().sum()) / self.batch_size
        return loss + self.reg_weight * l2 + self.auxiliary_loss(h, parts)
