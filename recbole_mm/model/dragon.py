r"""DRAGON: enhancing dyadic relations with homogeneous graphs for multimodal recommendation.

Zhou et al., ECAI 2023, as MMRec implements it (``src/models/dragon.py`` of enoche/MMRec):

- One :class:`~recbole_mm.model.layers.ModalityGCN` per modality on the full user–item
  graph (MLP ``raw -> 4d -> d``, a U x d preference table, :math:`x + \hat A x + \hat A^2 x`).
- Users: :math:`u = [w_{u0} v_u \| w_{u1} t_u]` with a free U x M weight table initialised to
  the softmax of a Xavier draw (not re-normalised during training, as in MMRec), then
  :math:`u \leftarrow u + \mathrm{agg}(u)` over the user–user co-occurrence graph (each user's
  top-200 co-interaction neighbours stored, ``user_graph_k`` = 40 drawn each epoch, softmax
  weights over the counts; :class:`~recbole_mm.data.graphs.UserGraphSampler`), or each user's
  fixed top 40 (``user_graph_sampling: fixed``). The graph in use is a buffer, so a checkpoint
  restores the one its epoch trained and evaluated with.
- Items: :math:`i = [v_i \| t_i] + G^{L_{mm}} [v_i \| t_i]` with the frozen kNN item graph
  G (``knn_k`` = 10, ``mm_image_weight`` = 0.1).
- Score :math:`z_u^\top z_i`; loss :math:`-\mathrm{mean}\,\log_2 \sigma(s^+ - s^-) + \lambda
  \sum_m \mathrm{mean}(p_{m,u}^2) + \lambda\, \mathrm{mean}(w^2)` (MMRec's base-2 log), λ =
  ``reg_weight``.

Subclasses (VLIF, MENTOR, DualGNN) change the branch inputs (:meth:`branch_features`), how the branch outputs
are combined (:meth:`fuse`) and add loss terms (:meth:`auxiliary_loss`).
"""
import math

import torch
import torch.nn as nn

from recbole_mm.data.graphs import UserGraphSampler
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender, one_modality_refusal
from recbole_mm.model.layers import ModalityGCN, propagate


class DRAGON(MultiModalRecommender):
    one_modality_ok = True  # MMRec's DRAGON builds the branch of each modality whose features exist

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.require_features()
        self.check_modalities()
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.n_uu_layers = config["n_uu_layers"]
        self.reg_weight = config["reg_weight"]
        self.adjacency = self.normalized_adjacency()
        self.branches = nn.ModuleDict({
            name: ModalityGCN(self.n_users, dim, self.embedding_size, self.n_ui_layers)
            for name, dim in self.branch_dims().items()
        })
        self.user_modality_weight = self.build_user_modality_weight(len(self.branches))
        self.item_graph = self.build_item_graph(config)
        self.build_user_graph(config)

    def build_item_graph(self, config):
        """The frozen kNN item–item graph G (a subclass without one, DualGNN, returns ``None``)."""
        image_weight = config["mm_image_weight"]
        present = [name for name in ("image", "text") if name in self.modality_features]
        weights = {"image": image_weight, "text": 1.0 - image_weight} if len(present) == 2 else \
            {present[0]: 1.0}  # one modality: its graph alone, as MMRec
        return self.item_knn_graph(config["knn_k"], weights)

    def build_user_graph(self, config):
        """The user–user co-occurrence sampler and the current graph (a subclass without a user
        graph overrides this to build neither)."""
        self.user_graph_sampler = UserGraphSampler(
            self.interaction_matrix, config["user_graph_k"], config["user_graph_stored"], self.device
        )
        self.user_graph_sampling = config["user_graph_sampling"] or "resample"
        if self.user_graph_sampling not in ("resample", "fixed"):
            raise ConfigError(f"user_graph_sampling must be 'resample' or 'fixed', got {self.user_graph_sampling!r}")
        # a buffer: the graph the saved epoch used travels with the checkpoint (state_dict)
        self.register_buffer("user_graph", self.draw_user_graph())

    # ------------------------------------------------------------------ structure
    def check_modalities(self):
        present = [modality for modality in ("image", "text") if modality in self.modality_features]
        if present and vars(type(self)).get("one_modality_ok"):  # DRAGON itself, not its subclasses
            return
        for modality in ("image", "text"):
            if modality not in self.modality_features:
                raise ConfigError(
                    f"{type(self).__name__} needs 'image' and 'text' modalities; got {list(self.modality_features)}."
                    + one_modality_refusal(type(self))
                )

    def branch_dims(self):
        """Input width of each GCN branch, in concatenation order."""
        return {name: features.shape[1] for name, features in self.modality_features.items()
                if name in ("image", "text")}

    def build_user_modality_weight(self, n_parts):
        """U x n_parts free weights, initialised to the softmax of a Xavier draw (MMRec); none for
        one part (MMRec's one-modality DRAGON uses that branch's users as they are)."""
        if n_parts == 1:
            return None
        draw = nn.init.xavier_normal_(torch.empty(self.n_users, n_parts, device=self.device))
        return nn.Parameter(torch.softmax(draw, dim=1))

    def draw_user_graph(self):
        """The user–user graph, sparse (U x U): a fresh draw (``user_graph_sampling: resample``)
        or every user's top-``user_graph_k`` neighbours by co-interaction count with the
        softmax of their counts as weights (``fixed``: what the public VLIF code uses for
        every user with at least k neighbours)."""
        if self.user_graph_sampling == "resample":
            return self.user_graph_sampler.sample()
        return self.user_graph_sampler.top_k()

    def pre_epoch_processing(self):
        """Draw this epoch's user–user graph (nothing to do when it is fixed)."""
        if self.user_graph_sampling == "resample":
            self.user_graph = self.draw_user_graph()

    # ------------------------------------------------------------------ forward
    def branch_features(self):
        """Item features entering each branch: dict branch -> (I x dim)."""
        return {name: self.modality_features[name] for name in self.branches}

    def branch_outputs(self):
        """dict branch -> ((U x d) users, (I x d) items)."""
        outputs = {}
        for name, features in self.branch_features().items():
            nodes = self.branches[name](self.adjacency, features)
            outputs[name] = torch.split(nodes, [self.n_users, self.n_items])
        return outputs

    def fuse(self, outputs):
        """Users [w_u0 x_u ‖ w_u1 y_u ‖ ...], items [x_i ‖ y_i ‖ ...] over the branches."""
        weight = self.user_modality_weight
        users = torch.cat([(1.0 if weight is None else weight[:, k:k + 1]) * outputs[name][0]
                           for k, name in enumerate(outputs)], dim=1)
        items = torch.cat([outputs[name][1] for name in outputs], dim=1)
        return users, items

    def homogeneous_parts(self, users, items):
        """(U^L u, G^L i): the user–user and item–item graph aggregations."""
        return (propagate(self.user_graph, users, self.n_uu_layers, combine="last"),
                propagate(self.item_graph, items, self.n_mm_layers, combine="last"))

    def add_homogeneous(self, users, items):
        """DRAGON: u + UU·u and i + G^L·i."""
        user_part, item_part = self.homogeneous_parts(users, items)
        return users + user_part, items + item_part

    def forward(self):
        users, items = self.fuse(self.branch_outputs())
        return self.add_homogeneous(users, items)

    # ------------------------------------------------------------------ loss
    def recommendation_loss(self, pos_scores, neg_scores):
        """MMRec's DRAGON loss: −mean log₂ σ(s⁺ − s⁻) (the BPR module's natural log / ln 2,
        so that a denoising loss installed in its place applies here too)."""
        return self.bpr_loss(pos_scores, neg_scores) / math.log(2.0)

    def regularisation(self, users):
        """λ · (Σ_branches mean(p_u²) + mean(w²)); no w term for a fusion without user weights."""
        preference = sum((branch.preference[users] ** 2).mean() for branch in self.branches.values())
        weights = 0.0 if self.user_modality_weight is None else (self.user_modality_weight ** 2).mean()
        return self.reg_weight * (preference + weights)

    def auxiliary_loss(self, interaction):
        """Extra loss terms of a subclass (VLIF's InfoNCE terms); none for DRAGON."""
        return 0.0

    def calculate_loss(self, interaction):
        users = interaction[self.USER_ID]
        user_all, item_all = self.forward()
        self.remember_representations(user_all, item_all)  # a no-op unless a stale-evaluation quirk is on
        user_e = user_all[users]
        pos = (user_e * item_all[interaction[self.ITEM_ID]]).sum(-1)
        neg = (user_e * item_all[interaction[self.NEG_ITEM_ID]]).sum(-1)
        loss = self.recommendation_loss(pos, neg) + self.regularisation(users)
        return loss + self.auxiliary_loss(interaction)
