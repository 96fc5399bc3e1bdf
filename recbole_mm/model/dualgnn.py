r"""DualGNN: dual graph neural network for multimedia recommendation.

Wang et al., IEEE Transactions on Multimedia 2021, as MMRec implements it (``src/models/dualgnn.py``
and ``src/configs/model/DualGNN.yaml`` of enoche/MMRec). DRAGON's ancestor, and built here on
DRAGON's skeleton (:class:`~recbole_mm.model.dragon.DRAGON`) without its item–item graph.
U users, I items, d = ``embedding_size``.

- **Single-modality graphs.** One :class:`~recbole_mm.model.layers.ModalityGCN` per modality m on
  the user–item train graph: layer 0 :math:`X_m = \mathrm{rownorm}([P_m ; \mathrm{MLP}_m(F_m)])`
  ((U + I) x d; a free U x d preference table on the item features through
  ``raw -> 4d -> d`` with LeakyReLU), output :math:`E_m = X_m + \hat A X_m + \hat A^2 X_m`
  (``n_ui_layers`` = 2). ``aggr_mode: add`` (MMRec's only grid value) is its ``Base_gcn``
  message :math:`x_j / \sqrt{d_i d_j}`, i.e. :math:`\hat A = D^{-1/2} A D^{-1/2}`; ``mean`` is
  PyG's mean aggregation of the raw messages, :math:`\hat A = D^{-1} A`.
- **Fusion** (MMRec's ``construction = 'weighted_sum'``): users
  :math:`u = \sum_m w_{um} E_{m,u}` (U x d) with w a free U x M table initialised to the softmax
  of a Xavier draw (not re-normalised during training), items :math:`i = \sum_m E_{m,i}` (I x d).
  One modality: that branch's users and items as they are (no weights).
- **User co-occurrence graph.** :math:`u \leftarrow u + \sum_{v} a_{uv} u_v` (``n_uu_layers`` = 1
  step), :math:`a_{u\cdot}` the softmax of the co-interaction counts :math:`c_{uv} = |\mathcal N_u
  \cap \mathcal N_v|` over u's ``user_graph_k`` = 40 neighbours (MMRec's ``User_Graph_sample``:
  ``softmax`` user aggregation, a (U x k) gather and a batched (1 x k)(k x d) product; here one
  sparse product with the (U x U) graph). The graph is DRAGON's
  (:class:`~recbole_mm.data.graphs.UserGraphSampler`, built from the train interactions instead
  of MMRec's offline ``user_graph_dict.npy``, the same top-200 lists). MMRec calls its
  ``topk_sample`` every epoch, which takes each user's *first* k stored neighbours (no draw):
  ``user_graph_sampling: fixed``, the default here. ``resample`` draws k of the stored 200 each
  epoch (DRAGON's default here).
- **Score** :math:`u^\top i`; **loss** :math:`-\mathrm{mean} \log_2 \sigma(s^+ - s^-) + \lambda
  (\sum_m \mathrm{mean}(P_m[u]^2) + \mathrm{mean}(w^2))` over the batch users u, λ = ``reg_weight``
  (MMRec's base-2 log; DRAGON's loss exactly).

Reference quirks and their switches (default False = fixed):

- ``dualgnn_user_fusion_quirk``: MMRec sums the item representations with
  ``representation = self.v_rep; representation += self.t_rep``, an in-place add on the very
  tensor it then fuses the users from, so its users are
  :math:`w_{u0} (v_u + t_u) + w_{u1} t_u` instead of :math:`w_{u0} v_u + w_{u1} t_u`. True
  reproduces that (with more modalities: the first branch's users replaced by the sum of all);
  items are the same either way.
- ``dualgnn_padding_quirk`` (needs ``user_graph_sampling: fixed``): a user with 0 < n < k
  neighbours has its list padded to k in MMRec by copying random entries, and the softmax runs
  over the padded list, so each copied neighbour's weight is multiplied by its multiplicity,
  redrawn every epoch (:meth:`~recbole_mm.data.graphs.UserGraphSampler.top_k` with ``pad``).
  False: the n neighbours with the softmax of their counts. Users with k neighbours or none are
  the same either way (none: no aggregation, as MMRec's all-zero weight row).

- ``dualgnn_stale_eval_quirk``: MMRec ranks with ``result_embed``, the representations of the
  last training batch's forward, computed before that step's optimiser update. False: a fresh
  forward once per evaluation (the base class's cache). True: the last training forward's users
  and items are kept (detached, in buffers that a checkpoint carries) and evaluation ranks with
  them (:meth:`~recbole_mm.model.abstract_recommender.MultiModalRecommender.setup_stale_evaluation`).
  One step matters: on the bundled synthetic data (2 batches an epoch) 5–10% of each user's
  top 20 differ between the two.

Reference behaviour kept without a switch:

- Dead code at MMRec's defaults, not built: the per-modality dropped-edge indices
  (``drop_rate`` = 0.1; computed, passed to the GCN and ignored there), ``MLP_v``, ``MLP_t``,
  ``MLP_user`` (``construction = 'cat_mlp'`` only), ``cold_start``, ``num_layer`` and the yaml's
  ``n_layers`` (the GCN always runs two convolutions: ``n_ui_layers`` = 2 here), ``dim_feat``.
  MMRec also L2-regularises an item weight table ``weight_i`` that no forward reads: its term
  adds :math:`\lambda\,\mathrm{mean}(w_i^2)` to the loss value and gradient to nothing else, so
  it is left out (training is unchanged).
- Message passing is a sparse product (no PyG); the degree carries DRAGON's 1e-7 guard.
"""
import torch

from recbole_mm.data.graphs import bipartite_edges, interaction_edges, mean_adjacency
from recbole_mm.errors import ConfigError
from recbole_mm.model.dragon import DRAGON
from recbole_mm.model.layers import propagate

AGGREGATIONS = ("add", "mean")


class DualGNN(DRAGON):
    one_modality_ok = True  # MMRec's DualGNN builds the branch of each modality whose features exist

    def __init__(self, config, dataset):
        self.fusion_quirk = bool(config["dualgnn_user_fusion_quirk"])
        self.padding_quirk = bool(config["dualgnn_padding_quirk"])
        super().__init__(config, dataset)
        self.setup_stale_evaluation(config["dualgnn_stale_eval_quirk"], self.embedding_size, self.embedding_size)
        aggregation = config["aggr_mode"] or "add"
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"DualGNN: aggr_mode must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
        if aggregation == "mean":
            users, items = interaction_edges(self.interaction_matrix)
            sources, targets = bipartite_edges(users.to(self.device), items.to(self.device), self.n_users)
            self.adjacency = mean_adjacency(sources, targets, self.n_users + self.n_items)

    # ------------------------------------------------------------------ structure
    def build_item_graph(self, config):
        """DualGNN has no item–item graph."""
        return None

    def build_user_graph(self, config):
        super().build_user_graph(config)
        if self.padding_quirk and self.user_graph_sampling != "fixed":
            raise ConfigError("DualGNN: dualgnn_padding_quirk pads MMRec's fixed top-k lists; it needs "
                              f"user_graph_sampling: fixed, got {self.user_graph_sampling!r}")

    def draw_user_graph(self):
        """DRAGON's graph; with ``dualgnn_padding_quirk``, the top-k lists padded as MMRec pads them."""
        if self.padding_quirk:
            return self.user_graph_sampler.top_k(pad=True)
        return super().draw_user_graph()

    def pre_epoch_processing(self):
        """Redraw the user graph: a resample, or MMRec's padding of the short lists."""
        if self.padding_quirk:
            self.user_graph = self.draw_user_graph()
        else:
            super().pre_epoch_processing()

    # ------------------------------------------------------------------ forward
    def fuse(self, outputs):
        r"""Users :math:`\sum_m w_{um} E_{m,u}`, items :math:`\sum_m E_{m,i}` (MMRec's weighted sum;
        with ``dualgnn_user_fusion_quirk`` the first branch's users are the sum of all branches)."""
        users = [branch_users for branch_users, _ in outputs.values()]
        items = sum(branch_items for _, branch_items in outputs.values())
        if self.user_modality_weight is None:
            return users[0], items
        if self.fusion_quirk:
            users[0] = sum(users)
        return sum(self.user_modality_weight[:, k:k + 1] * part for k, part in enumerate(users)), items

    def add_homogeneous(self, users, items):
        """u + Σ_v a_uv u_v over the user co-occurrence graph; items unchanged."""
        return users + propagate(self.user_graph, users, self.n_uu_layers, combine="last"), items
