r"""MENTOR: multi-level self-supervised learning for multimodal recommendation.

Xu et al., AAAI 2025, as its public code implements it (``src/models/mentor.py`` and
``src/configs/model/MENTOR.yaml`` of Jinfeng-Xu/MENTOR), built on DRAGON's skeleton
(:class:`~recbole_mm.model.dragon.DRAGON`). U users, I items, d = ``embedding_size``.

Representations (what is scored):

- one :class:`~recbole_mm.model.layers.ModalityGCN` per modality m ∈ {v, t} on the full
  user–item graph Â: layer 0 = rownorm([P_m ; MLP_m(x_m)]) ((U + I) x d, MLP ``raw -> 4d -> d``),
  output :math:`E_m = \sum_{l=0}^{L} \hat A^l E^{(0)}_m` (L = ``n_ui_layers`` = 2);
- users :math:`u = [w_{u0} v_u \| w_{u1} t_u]` (U x 2d, w a free U x 2 table initialised to the
  softmax of a Xavier draw), items :math:`i = [v_i \| t_i] + G^{L_{mm}} [v_i \| t_i]` (I x 2d,
  G the frozen kNN item graph, ``knn_k`` = 10, ``mm_image_weight`` = 0.1); score :math:`u^\top i`.

Training adds (all in :meth:`MENTOR.calculate_loss`):

- an **ID modality**: a learnable I x d table ``id_feat`` (Xavier normal) fed through its own
  ModalityGCN (MLP ``d -> 4d -> d``, own preference table) exactly like a feature modality;
- **multilevel alignment** (:func:`alignment_loss`): four (U + I) x 2d matrices, the fused one
  Z = [u ; i] and the "doubled" single-modality ones :math:`Z_m = [[m_u \| m_u] ; [m_i \| m_i] +
  G^{L_{mm}}[m_i \| m_i]]` for m ∈ {id, v, t} (users unweighted); with μ(Z), σ²(Z) the scalar mean
  and unbiased variance over all entries,
  :math:`\mathcal L_{align} = \sum_{a<b} |\sigma^2(Z_a) - \sigma^2(Z_b)| + |\mu(Z_a) - \mu(Z_b)|`
  over the 6 pairs, weight ``align_weight``;
- **graph perturbation** (:meth:`MENTOR.perturbed_views`): two extra views of v and t whose GCN
  adds SimGCL noise after every propagation,
  :math:`h \leftarrow h + \epsilon\,\mathrm{sign}(h) \odot \mathrm{rownorm}(U[0,1))`
  (:func:`~recbole_mm.model.layers.perturbed_propagate`, ε = ``perturbation_eps`` = 0.1), fused
  and item-graph-enhanced like the main view; :math:`\mathcal L_g = \mathrm{InfoNCE}(u^{(1)},
  u^{(2)}) + \mathrm{InfoNCE}(i^{(1)}, i^{(2)})` over **all** users and **all** items (cosine,
  τ = ``ssl_temperature``; the reference's ``temp``), weight ``mask_weight_g``; computed 4096
  anchors at a time with recomputation in backward
  (:func:`~recbole_mm.model.loss.chunked_info_nce`), so memory stays O(4096 x n), not O(n²);
- **feature masking** (:func:`feature_masking_loss`), on the final u and i:
  :math:`\mathcal L_f = \sum_{X \in \{U, I\}} 1 - \mathrm{mean}_r \cos(\mathrm{dropout}_p(X_r),
  W X_r + b)`, with a Linear (2d -> 2d) and p = ``dropout`` = 0.5, weight ``mask_weight_f``;
- DRAGON's loss: :math:`-\mathrm{mean} \log_2 \sigma(s^+ - s^-) + \lambda (\mathrm{mean}(P_v[u]^2) +
  \mathrm{mean}(P_t[u]^2) + \mathrm{mean}(w^2))`, λ = ``reg_weight`` (the ID and noisy branches'
  preferences are not regularised).

RecBole's padding user and item (row 0) are left out of the alignment statistics, the
InfoNCE terms and the masking term (the reference has no padding rows).

Reference quirks and their switches:

- ``mentor_mask_no_grad_quirk`` (default False): the reference computes the whole masking term
  under ``torch.no_grad()``, so it adds a constant to the loss and never trains (its Linear
  stays at its initialisation). False = the paper's term, with gradient into u, i and the
  Linear; True = the reference (same value, no gradient).
- ``mentor_shared_perturbed_encoder`` (default False = the reference): the reference's noisy
  views come from four *separate* GCN copies (``v_gcn_n1``, ``v_gcn_n2``, ``t_gcn_n1``,
  ``t_gcn_n2``) with their own preferences and MLPs, so :math:`\mathcal L_g` trains nothing of the
  scored representation except w. True = SimGCL's reading: both noisy views run the main v and
  t branches (shared parameters, only the noise differs).
- ``mentor_user_graph`` (default False = the reference): the reference samples DRAGON's
  user–user graph every epoch (k = 40) but never aggregates over it, so it is not built here.
  True adds DRAGON's user-graph term :math:`u + U^{L} u` (``user_graph_k`` = 40,
  ``user_graph_stored``, ``user_graph_sampling``, ``n_uu_layers``) to every view.
- Dead values of the reference with no key: ``drop_rate`` = 0.1 (per-modality dropped-edge
  sets, passed to the GCN and ignored there, as in DRAGON), ``dim_feat`` = 128 (assigned, never
  read; the masking Linear's width is the representation width 2d), ``weight_i``, ``MLP_user``,
  ``image_trs`` / ``text_trs`` (never used). The kNN graph's disk cache is keyed by every
  parameter (the reference's only by k).
- The reference validates on Recall@10 (its overall.yaml); the packaged default keeps the
  plugin's Recall@20. Evaluation runs a fresh forward (the reference reuses the embeddings of
  the last training batch).
"""
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.errors import ConfigError
from recbole_mm.model.dragon import DRAGON
from recbole_mm.model.layers import ModalityGCN, perturbed_propagate, propagate
from recbole_mm.model.loss import chunked_info_nce


def gaussian_moments(matrix):
    """(mean, unbiased variance) over all entries of a matrix: two scalars."""
    return matrix.mean(), matrix.var()


def alignment_loss(matrices):
    r""":math:`\sum_{a<b} |\sigma^2_a - \sigma^2_b| + |\mu_a - \mu_b|` over every pair of the given
    matrices (scalar mean and unbiased variance of all entries of each)."""
    moments = [gaussian_moments(matrix) for matrix in matrices]
    return sum((var_a - var_b).abs() + (mean_a - mean_b).abs()
               for (mean_a, var_a), (mean_b, var_b) in itertools.combinations(moments, 2))


def feature_masking_loss(embeddings, projection, dropout):
    r""":math:`1 - \mathrm{mean}_r \cos(\mathrm{dropout}_p(x_r), \mathrm{proj}(x_r))` for an
    (N x D) matrix, with inverted dropout (kept entries scaled by 1/(1 - p), ``F.dropout``)
    always on."""
    masked = F.dropout(embeddings, dropout, training=True)
    return 1.0 - F.cosine_similarity(masked, projection(embeddings), dim=1).mean()


class MENTOR(DRAGON):
    one_modality_refusal = (
        "Jinfeng-Xu/MENTOR's forward builds the image and text GCNs and their noisy views unconditionally "
        "(on a one-modality folder it stops with an AttributeError), and its alignment pairs the two modalities")
    def __init__(self, config, dataset):
        self.use_user_graph = bool(config["mentor_user_graph"])
        super().__init__(config, dataset)
        self.align_weight = config["align_weight"]
        self.mask_weight_f = config["mask_weight_f"]
        self.mask_weight_g = config["mask_weight_g"]
        self.ssl_temperature = config["ssl_temperature"]
        self.mask_dropout = config["dropout"]
        self.perturbation_eps = config["perturbation_eps"]
        self.mask_no_grad_quirk = bool(config["mentor_mask_no_grad_quirk"])
        self.shared_perturbed_encoder = bool(config["mentor_shared_perturbed_encoder"])
        if not 0.0 <= self.mask_dropout < 1.0:
            raise ConfigError(f"MENTOR: dropout (the feature-masking rate) must be in [0, 1), got {self.mask_dropout}")

        d = self.embedding_size
        self.id_feat = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, d, device=self.device)))
        self.id_branch = ModalityGCN(self.n_users, d, d, self.n_ui_layers).to(self.device)
        self.perturbed_branches = None
        if not self.shared_perturbed_encoder:  # the reference's v/t_gcn_n1, v/t_gcn_n2
            self.perturbed_branches = nn.ModuleList([
                nn.ModuleDict({name: ModalityGCN(self.n_users, dim, d, self.n_ui_layers)
                               for name, dim in self.branch_dims().items()})
                for _ in range(2)
            ]).to(self.device)
        self.mask_projection = nn.Linear(len(self.branches) * d, len(self.branches) * d).to(self.device)

    # ------------------------------------------------------------------ structure
    def build_user_graph(self, config):
        """DRAGON's user–user graph only with ``mentor_user_graph`` (the reference samples one
        and never uses it)."""
        if self.use_user_graph:
            super().build_user_graph(config)
        else:
            self.user_graph = None

    def pre_epoch_processing(self):
        if self.use_user_graph:
            super().pre_epoch_processing()

    def add_homogeneous(self, users, items):
        """:math:`i + G^{L} i`; users unchanged (plus DRAGON's :math:`U^L u` with ``mentor_user_graph``)."""
        if self.use_user_graph:
            return super().add_homogeneous(users, items)
        return users, items + propagate(self.item_graph, items, self.n_mm_layers, combine="last")

    # ------------------------------------------------------------------ views
    def draw_noise(self, like):
        """The perturbation draw Δ ~ U[0, 1) of the noisy views (a method, so tests can fix it)."""
        return torch.rand_like(like)

    def perturbed_views(self):
        """The two noisy views: tuple of two ((U x 2d) users, (I x 2d) items), each fused and
        item-graph-enhanced like the main view."""
        views = []
        for index in range(2):
            branches = self.branches if self.perturbed_branches is None else self.perturbed_branches[index]
            outputs = {}
            for name, features in self.branch_features().items():
                branch = branches[name]
                layer0 = F.normalize(torch.cat([branch.preference, branch.mlp(features)], dim=0), dim=1)
                nodes = perturbed_propagate(self.adjacency, layer0, branch.n_layers, self.perturbation_eps,
                                            self.draw_noise)
                outputs[name] = torch.split(nodes, [self.n_users, self.n_items])
            views.append(self.add_homogeneous(*self.fuse(outputs)))
        return tuple(views)

    def doubled_view(self, users, items):
        """A single modality at the fused width: users [m_u ‖ m_u] (unweighted), items
        [m_i ‖ m_i] + G^L [m_i ‖ m_i]; (U x 2d), (I x 2d) (the reference's guide / v / t
        representations)."""
        copies = len(self.branches)
        items = torch.cat([items] * copies, dim=1)
        return torch.cat([users] * copies, dim=1), items + propagate(self.item_graph, items, self.n_mm_layers,
                                                                     combine="last")

    def without_padding(self, users, items):
        """Users and items without RecBole's padding row 0, stacked: (U - 1 + I - 1) x D."""
        return torch.cat([users[1:], items[1:]], dim=0)

    # ------------------------------------------------------------------ loss terms
    def alignment_term(self, users, items, outputs):
        """:func:`alignment_loss` over {fused, ID-doubled, v-doubled, t-doubled}."""
        id_users, id_items = torch.split(self.id_branch(self.adjacency, self.id_feat), [self.n_users, self.n_items])
        views = [(id_users, id_items)] + [outputs[name] for name in self.branches]
        matrices = [self.without_padding(users, items)]
        matrices += [self.without_padding(*self.doubled_view(*view)) for view in views]
        return alignment_loss(matrices)

    def masking_term(self, users, items):
        """:func:`feature_masking_loss` of users plus items; under ``no_grad`` with the quirk."""
        def term():
            return sum(feature_masking_loss(x[1:], self.mask_projection, self.mask_dropout) for x in (users, items))

        if self.mask_no_grad_quirk:
            with torch.no_grad():
                return term()
        return term()

    def perturbation_term(self):
        """InfoNCE between the two noisy views over all users plus over all items."""
        (users_1, items_1), (users_2, items_2) = self.perturbed_views()
        return (chunked_info_nce(users_1[1:], users_2[1:], self.ssl_temperature)
                + chunked_info_nce(items_1[1:], items_2[1:], self.ssl_temperature))

    def calculate_loss(self, interaction):
        users_in_batch = interaction[self.USER_ID]
        outputs = self.branch_outputs()
        users, items = self.add_homogeneous(*self.fuse(outputs))
        user_e = users[users_in_batch]
        pos = (user_e * items[interaction[self.ITEM_ID]]).sum(-1)
        neg = (user_e * items[interaction[self.NEG_ITEM_ID]]).sum(-1)
        loss = self.recommendation_loss(pos, neg) + self.regularisation(users_in_batch)
        if self.align_weight:
            loss = loss + self.align_weight * self.alignment_term(users, items, outputs)
        if self.mask_weight_f:
            loss = loss + self.mask_weight_f * self.masking_term(users, items)
        if self.mask_weight_g:
            loss = loss + self.mask_weight_g * self.perturbation_term()
        return loss
