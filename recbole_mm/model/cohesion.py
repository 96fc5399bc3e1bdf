r"""COHESION: composite graph convolutional network with dual-stage fusion for multimodal
recommendation.

Xu et al., SIGIR 2025, as its public code implements it (``src/models/cohesion.py`` and
``src/configs/model/COHESION.yaml`` of Jinfeng-Xu/COHESION, an MMRec fork derived from DRAGON).
U users, I items, d = ``embedding_size``, branches b ∈ (id, image, text), K = 3 blocks.

1. **Early fusion** (ID-guided refinement), per branch, item side: the modality's features go
   through an MLP ``raw -> 4d -> d`` (LeakyReLU) and are fused element-wise with the learnable
   item ID embedding :math:`e_i \in \mathbb R^{I \times d}`:
   :math:`\tilde f_i = \sqrt{(e_i^2 + \mathrm{MLP}(f_i)^2)/2 + 10^{-8}}`. The ID branch feeds
   :math:`e_i` itself through its own MLP (``d -> 4d -> d``) and fuses it with :math:`e_i`.
2. **Heterogeneous GCN** per branch: :math:`X^{(0)} = \mathrm{rownorm}([p_b; \tilde f])`
   ((U + I) x d, :math:`p_b` a free U x d preference table), then LayerGCN's layer-refined
   propagation on the user–item graph
   (:func:`~recbole_mm.model.layers.layer_refined_propagate`):
   :math:`X^{(l)} = \cos(\hat A X^{(l-1)}, X^{(0)}) \odot \hat A X^{(l-1)}` (row-wise cosine),
   output :math:`\sum_{l=0}^{L} X^{(l)}`, L = ``n_ui_layers``. :math:`\hat A` is the
   symmetric-normalised train graph; with ``dropout`` > 0 the training graph is FREEDOM's
   degree-sensitive pruning, redrawn every epoch (the reference's ``masked_adj``; its default
   and grid are ``dropout: 0``, i.e. the full graph).
3. **Representations** (the late fusion is a concatenation): users and items
   :math:`z = [x_{id} \| x_{image} \| x_{text}]` ((U + I) x 3d), then the homogeneous graphs:
   :math:`z_u \leftarrow z_u + S z_u` with the user–user co-occurrence graph S
   (:class:`~recbole_mm.data.graphs.UserGraphSampler`, ``user_graph_k`` = 40 neighbours
   redrawn each epoch, softmax weights over the counts) and
   :math:`z_i \leftarrow z_i + G^{L_{mm}} z_i` with the frozen kNN item graph G (``knn_k`` =
   10, ``mm_image_weight`` = 0.1, ``n_mm_layers`` = 1).
4. **Adaptive optimisation** (training only, :func:`adaptive_block_scores`): split
   :math:`z_u \odot z_i` into the K branch blocks, :math:`s^{\pm}_k = \langle z_{u,k},
   z_{i^\pm,k}\rangle`, weights :math:`w = 1 - \mathrm{softmax}_k(s^+_k - s^-_k)`, detached
   (they sum to K − 1: the branch that already separates the pair best gets the least weight),
   :math:`s^\pm = \sum_k w_k s^\pm_k`.
5. **Loss**: :math:`-\mathrm{mean}\,\log_2 \sigma(s^+ - s^-) + \lambda\,[\mathrm{mean}(p_{image,u}^2)
   + \mathrm{mean}(p_{text,u}^2) + \mathrm{mean}(w_u^2)]`, λ = ``reg_weight``, the base-2 log
   as in MMRec's DRAGON.
6. **Score** (evaluation): the plain dot product :math:`z_u^\top z_i` (the reference's
   ``full_sort_predict``; the adaptive weights need a negative item and exist only in the
   loss), so :meth:`score_users` is the base class's.

Reference quirks and departures:

- ``cohesion_detach_id_quirk`` (default ``False``): the reference concatenates the ID branch's
  output as ``id_rep.data``, i.e. detached. No gradient then reaches the ID branch's
  preference table and MLP (they stay at their random initialisation: parameters that are
  created, used in every score and never trained), and the ID embedding learns only through
  the image and text branches' early fusion. The paper describes the ID ("behaviour")
  modality as a learned branch and never mentions a stop-gradient, and MENTOR (same authors,
  same code base) trains its ID branch, so the default trains it; ``True`` reproduces the code.
- :math:`w_u` (U x 2, initialised to the softmax of a Xavier draw, as DRAGON's user weights)
  enters only the regularisation term: the reference creates it, regularises it and never uses
  it in a score. It is mirrored (it changes the loss value, not the gradient of anything else).
  The ID branch's preference table is not regularised (mirrored).
- Prediction: the reference scores with the representations cached by the last training
  forward (one optimiser step stale, and on the pruned graph when ``dropout`` > 0); here
  :meth:`forward` runs once per evaluation on the full graph (the base class's cache).
- The user–user graph: the reference takes each user's first 40 stored neighbours and pads
  short lists by repeating random ones; :class:`UserGraphSampler` draws 40 of the top 200 in
  proportion to the softmax of the counts, as this package's DRAGON (no switch).
- Not created: the reference's trainable copies of the raw feature tables (used only to build
  the kNN graph, never reached by a gradient), ``result_embed``, ``BGCNLayer``, ``drop_rate``
  and the yaml's unused ``n_layers``. Its kNN cache file is keyed by k only; ours by every
  parameter (:func:`~recbole_mm.data.graphs.item_knn_graph`).
"""
import math

import torch
import torch.nn as nn

from recbole_mm.data.graphs import UserGraphSampler
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender, one_modality_refusal
from recbole_mm.model.layers import MLP, layer_refined_propagate, propagate

MODALITIES = ("image", "text")


def id_guided_fusion(id_embedding, features, eps=1e-8):
    r"""COHESION's early fusion: :math:`\sqrt{(e^2 + f^2)/2 + \epsilon}`, element-wise (the
    quadratic mean of the ID embedding and the projected features).

    Args:
        id_embedding, features: (I x d) tensors.

    Returns:
        (I x d) tensor.
    """
    return ((id_embedding * id_embedding + features * features) / 2 + eps).sqrt()


def adaptive_block_scores(user_e, pos_e, neg_e, n_blocks):
    r"""COHESION's adaptive optimisation: block-weighted scores of (u, i⁺, i⁻) triples.

    The d-wide rows are split into ``n_blocks`` equal blocks (one per branch);
    :math:`s^\pm_k = \langle u_k, i^\pm_k \rangle`,
    :math:`w = 1 - \mathrm{softmax}_k(s^+_k - s^-_k)` without gradient, and
    :math:`s^\pm = \sum_k w_k s^\pm_k`.

    Args:
        user_e, pos_e, neg_e: (B x d) tensors, d divisible by ``n_blocks``.

    Returns:
        (pos (B,), neg (B,), weights (B x n_blocks), detached).
    """
    blocks = (user_e.shape[0], n_blocks, -1)
    pos_blocks = (user_e * pos_e).reshape(blocks).sum(-1)
    neg_blocks = (user_e * neg_e).reshape(blocks).sum(-1)
    weights = 1.0 - torch.softmax((pos_blocks - neg_blocks).detach(), dim=1)
    return (weights * pos_blocks).sum(1), (weights * neg_blocks).sum(1), weights


class FusedLayerGCNBranch(nn.Module):
    r"""One COHESION branch: ID-guided fusion of the item input, then the layer-refined GCN.

    Item layer 0: :func:`id_guided_fusion` of the ID embedding and :math:`\mathrm{MLP}(x_i)`
    (``feature_dim -> 4d -> d``, LeakyReLU); user layer 0: a free preference vector
    :math:`p_u`; both L2-normalised per row, then
    :func:`~recbole_mm.model.layers.layer_refined_propagate` summing layers 0..L.

    Args:
        n_users: U.
        feature_dim: width of the branch's item input.
        embedding_dim: d.
        n_layers: L.
    """

    def __init__(self, n_users, feature_dim, embedding_dim, n_layers):
        super().__init__()
        self.n_layers = n_layers
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, embedding_dim)))
        self.mlp = MLP([feature_dim, 4 * embedding_dim, embedding_dim])

    def layer_zero(self, item_input, item_id_embedding):
        """Row-normalised [p; fused item input], (U + I) x d."""
        fused = id_guided_fusion(item_id_embedding, self.mlp(item_input))
        return nn.functional.normalize(torch.cat([self.preference, fused], dim=0), dim=1)

    def forward(self, adjacency, item_input, item_id_embedding):
        """(U + I) x d node representations."""
        ego = self.layer_zero(item_input, item_id_embedding)
        return layer_refined_propagate(adjacency, ego, self.n_layers, include_ego=True)


class COHESION(MultiModalRecommender):
    one_modality_refusal = (
        "Jinfeng-Xu/COHESION builds its item graph from both features and scores three blocks (ID, image, "
        "text) unconditionally (on a one-modality folder it stops in __init__)")
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        missing = [name for name in MODALITIES if name not in self.modality_features]
        if missing:
            raise ConfigError(f"COHESION needs 'image' and 'text' modalities; got {list(self.modality_features)}."
                              + one_modality_refusal(COHESION))
        d = self.embedding_size
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.reg_weight = config["reg_weight"]
        self.detach_id_quirk = bool(config["cohesion_detach_id_quirk"])

        self.item_id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, d)))
        inputs = {"id": d, **{name: self.modality_features[name].shape[1] for name in MODALITIES}}
        self.branches = nn.ModuleDict({
            name: FusedLayerGCNBranch(self.n_users, width, d, self.n_ui_layers) for name, width in inputs.items()
        })
        # w_u: created and regularised by the reference, used in no score (see the module docstring)
        draw = nn.init.xavier_normal_(torch.empty(self.n_users, len(MODALITIES)))
        self.user_modality_weight = nn.Parameter(torch.softmax(draw, dim=1))

        image_weight = config["mm_image_weight"]
        self.item_graph = self.item_knn_graph(config["knn_k"], {"image": image_weight, "text": 1.0 - image_weight})
        self.setup_edge_pruning(config["dropout"])
        self.user_graph_sampler = UserGraphSampler(
            self.interaction_matrix, config["user_graph_k"], config["user_graph_stored"], self.device
        )
        # a buffer: the graph the saved epoch used travels with the checkpoint (state_dict); under
        # DDP it is left out of the buffer broadcast (collectives.wrap_model), as DRAGON's
        self.register_buffer("user_graph", self.user_graph_sampler.sample())

    def pre_epoch_processing(self):
        """Redraw the user–user graph and the pruned training graph (no pruning by default)."""
        self.user_graph = self.user_graph_sampler.sample()
        self.resample_edges()

    # ------------------------------------------------------------------ forward
    def branch_inputs(self):
        """Item input of each branch, in concatenation order: dict name -> (I x width)."""
        return {"id": self.item_id_embedding, **{name: self.modality_features[name] for name in MODALITIES}}

    def branch_outputs(self):
        """dict branch -> (U + I) x d; the ID branch detached under ``cohesion_detach_id_quirk``."""
        adjacency = self.user_item_adjacency()
        outputs = {name: self.branches[name](adjacency, item_input, self.item_id_embedding)
                   for name, item_input in self.branch_inputs().items()}
        if self.detach_id_quirk:
            outputs["id"] = outputs["id"].detach()
        return outputs

    def forward(self):
        """(users (U x 3d), items (I x 3d)): [id ‖ image ‖ text] plus the homogeneous graphs."""
        nodes = torch.cat(list(self.branch_outputs().values()), dim=1)
        users, items = torch.split(nodes, [self.n_users, self.n_items])
        users = users + torch.sparse.mm(self.user_graph, users)
        items = items + propagate(self.item_graph, items, self.n_mm_layers, combine="last")
        return users, items

    # ------------------------------------------------------------------ loss
    def regularisation(self, users):
        """λ · (mean(p_image,u²) + mean(p_text,u²) + mean(w²)); the ID preference is not regularised."""
        preference = sum((self.branches[name].preference[users] ** 2).mean() for name in MODALITIES)
        return self.reg_weight * (preference + (self.user_modality_weight ** 2).mean())

    def calculate_loss(self, interaction):
        users = interaction[self.USER_ID]
        user_all, item_all = self.forward()
        pos, neg, _ = adaptive_block_scores(user_all[users], item_all[interaction[self.ITEM_ID]],
                                            item_all[interaction[self.NEG_ITEM_ID]], len(self.branches))
        # −mean log₂ σ: the BPR module's natural log / ln 2 (a denoising loss installed in its place applies)
        return self.bpr_loss(pos, neg) / math.log(2.0) + self.regularisation(users)
