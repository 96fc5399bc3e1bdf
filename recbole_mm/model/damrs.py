r"""DA-MRS: denoising and aligning multi-modal content and user feedback.

Xu et al., "Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal
Content and User Feedback", KDD 2024, as MMRec ships it (``src/models/damrs.py`` of
enoche/MMRec, contributed by the authors; author repository XMUDM/DA-MRS, where the same code is
``DA-MRS+LightGCN``). U users, I items, d = ``embedding_size``, B triples in a batch.

**Denoised item–item graphs** (built once, cached on disk, no file to make by hand):

- *Modality graphs* :math:`G_v, G_t` (I x I): a pair (i, j) survives only where its cosine is at
  least the mean of the whole similarity matrix in *both* modalities (cross-modal consistency);
  each item keeps its ``knn_k`` most similar surviving items per modality (all of them when
  fewer survive), edges of weight 1, :math:`1/\sqrt{d_i d_j}` with row degrees
  (:func:`~recbole_mm.data.graphs.consistent_knn_graphs`).
- *Behaviour graph* :math:`G_s` (I x I): each item, itself and its ``damrs_behaviour_k`` items
  with most users in common, among those with at least ``damrs_behaviour_min_count``; weight 1,
  same normalisation (:func:`~recbole_mm.data.graphs.cooccurrence_item_graph`). The reference
  reads it from ``item_graph_dict_2.npy``, which the authors' ``build_iib_graph.py --topk=2``
  makes offline from the train split (co-interaction counts ≥ 2, top 2 per item; the counts it
  stores are not used by the model).

**Representations.** :math:`(E_u, E_i)` = LightGCN (mean of layers 0..``n_ui_layers``) on the
user–item graph from the ID tables; the three item views
:math:`h_m = G_m^{L} E^{(0)}_{item}` (m ∈ {t, v, s}, L = ``n_mm_layers``) propagate the *ego*
item IDs (the features only shape the graphs). Scores :math:`e_u^\top (e_i + \bar h_i)`,
:math:`\bar h = (h_t + h_v + h_s)/3`.

**Loss** = denoised BPR + ``neighbor_weight`` · :math:`L_{AI}` + ``kl_weight`` · :math:`L_{AU}`.

- *Preference-guided BPR weights* (:func:`feedback_weights`), no gradient: with
  :math:`p_m = \sigma(e_u^\top \hat h_{m,i^+})` and :math:`n_m = \sigma(e_u^\top \hat h_{m,i^-})`
  (unit-length views, 3 x B), :math:`w^+ = \mathrm{clip}(\bar p\, e^{-2\,\mathrm{var}(p)}, 0, 1)`
  (unbiased variance over the 3 views) and
  :math:`w^- = \mathrm{clip}(\max_m p_m - \bar n, 0, 1)\,[\bar p < \bar n]` where :math:`\bar n` is
  the mean of n over views **and the whole batch** (one scalar: the batch's level of preference
  for sampled negatives, against which a positive whose views all score low is suspected noise;
  the reference reduces ``p`` per triple and ``n`` over everything, and so do we). Then
  :math:`-\frac1B\sum [w^+ \log\sigma(s^+ - s^-) + w^- \log\sigma(s^- - s^+)]` on the final scores.
- *Alignment guided by item relations* :math:`L_{AI}` (:func:`neighbour_discrimination`): for each
  item b of the batch (pos ∪ neg, unique) and each view m, softmax cosine "label" distributions
  over all items :math:`P_m` (B_i x I); the view's 10 *multi-modal* positives are the top of
  :math:`P_{m'} + P_{m''} + 2 P_m`, its 10 *single-modal* positives the top of :math:`P_m` once
  those are removed (:func:`pseudo_positives`); then with τ = 0.2 on unit vectors
  :math:`-\log\frac{\sum_{mm} e^{c/\tau}}{\sum_{all} e^{c/\tau}} - \log\frac{\sum_{single} e^{c/\tau}}
  {\sum_{all} e^{c/\tau} - \sum_{mm} e^{c/\tau}}` (each log's argument + 1e-9), mean over b, mean over
  the three views.
- *Alignment guided by user preference* :math:`L_{AU}` (:func:`symmetric_bernoulli_kl`): for the
  batch's unique users × unique items, :math:`p_g = \sigma(e_u^\top \hat e_i)` (LightGCN item,
  unit length) and :math:`p_h = \sigma(e_u^\top \hat{\bar h}_i)`; the mean of
  :math:`KL(p_g \| p_h) + KL(p_h \| p_g)` of the Bernoulli distributions, computed as
  :math:`(p_g - p_h)(x_g - x_h)` of the logits (the same value, without the reference's
  ``log(1 - p)`` that overflows once a logit passes ~17).

**Differences from the reference, none of them changing a value it computes:** the "all items"
of the label distributions and of :math:`L_{AI}` exclude RecBole's padding item 0 (MMRec has
none); the label distributions are computed without gradient (only their top-k indices are
used); MMRec's ``full_sort_predict`` runs the whole forward for every user batch, ours once per
evaluation (the base class cache); the image/text ``nn.Linear`` layers the reference creates but
never uses are left out, as are its unread keys (``feat_embed_dim``, ``weight_size``,
``reg_weight``, ``lambda_coeff``, ``cf_model``). Pairs whose cosine is exactly the mean, and ties
in the top-k, may fall differently. With fewer than 21 items the pseudo-positive count drops from
10 to ⌊(I − 1)/2⌋ (the reference stops there).

No ``*_quirk`` switch: every statement of the reference's executed path is either followed as
written or changed above without changing its value. (Its swapped ``p_v``/``p_s`` names in the
weights are symmetric in the formula; the scalar :math:`\bar n` is kept as the reference's choice,
the paper's text not being at hand to say otherwise.)

Needs both 'image' and 'text': the consistency mask and the three views are built from both.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.data.graphs import consistent_knn_graphs, cooccurrence_item_graph
from recbole_mm.errors import ConfigError
from recbole_mm.model.abstract_recommender import MultiModalRecommender, one_modality_refusal
from recbole_mm.model.layers import FrozenSparse, propagate
from recbole_mm.model.loss import weighted_bpr

VIEWS = ("text", "image", "behaviour")
PSEUDO_POSITIVES = 10  # per anchor and kind (multi-modal, single-modal), as the reference
TEMPERATURE = 0.2  # of the neighbour discrimination, as the reference
LOG_EPS = 1e-9  # the reference's 10e-10 inside each log of the neighbour discrimination


def label_distributions(anchors, table):
    """Softmax over the rows of ``table`` of the cosine of each anchor to each row: (B x d), (N x d) -> (B x N)."""
    return torch.softmax(F.normalize(anchors, dim=1) @ F.normalize(table, dim=1).T, dim=1)


def pseudo_positives(own, other_a, other_b, count):
    """The anchors' multi-modal positives (top ``count`` of ``other_a + other_b + 2 own``) and
    single-modal positives (top ``count`` of ``own`` once those are zeroed): two (B x count) index tensors."""
    return _positives_given_sum(own.clone(), other_a + other_b + own, count)


def _positives_given_sum(own, every_view, count):
    """:func:`pseudo_positives` from ``every_view``, the sum of the three views' distributions
    (others + 2 own = every_view + own), computed once for the three views; ``own`` is spent:
    zeroed in place at the multi-modal positives."""
    multi = torch.topk(every_view + own, count, dim=1).indices
    single = torch.topk(own.scatter_(1, multi, 0.0), count, dim=1).indices
    return multi, single


@torch.no_grad()
def view_pseudo_positives(anchors, tables, count, budget_elements=2 ** 24):
    """Each view's :func:`pseudo_positives` for the anchors, from the three views' label
    distributions, computed for ``budget_elements // N`` anchors at a time: the (B x N)
    distributions of the whole batch are never held at once (3 x 1.6 GB at 4,096 anchors and
    100k items).

    Args:
        anchors: dict view -> (B x d) the anchors' rows in that view.
        tables: dict view -> (N x d) every item's row in that view.

    Returns:
        dict view -> (multi, single), two (B x count) index tensors into the tables.
    """
    n_anchors, n_items = len(anchors[VIEWS[0]]), len(tables[VIEWS[0]])
    chunk = max(1, budget_elements // max(n_items, 1))
    found = {name: ([], []) for name in VIEWS}
    for start in range(0, n_anchors, chunk):
        labels = {name: label_distributions(anchors[name][start:start + chunk], tables[name]) for name in VIEWS}
        every_view = labels[VIEWS[0]] + labels[VIEWS[1]]
        every_view += labels[VIEWS[2]]
        for name in VIEWS:  # each view's distribution is spent once the sum holds it
            multi, single = _positives_given_sum(labels[name], every_view, count)
            found[name][0].append(multi)
            found[name][1].append(single)
        del labels, every_view
    return {name: (torch.cat(multi), torch.cat(single)) for name, (multi, single) in found.items()}


def neighbour_discrimination(anchors, table, multi, single, temperature=TEMPERATURE):
    r"""DA-MRS's :math:`L_{AI}` for one view: anchors (B x d), all items (N x d), positive indices
    (B x k) into ``table``; mean over the anchors (see the module docstring)."""
    anchors, table = F.normalize(anchors, dim=1), F.normalize(table, dim=1)
    # one (B x N) block, scaled and exponentiated in place (autograd keeps that block only)
    every = (anchors @ table.T).div_(temperature).exp_().sum(dim=1)
    multi_sum = torch.exp(torch.einsum("bd,bkd->bk", anchors, table[multi]) / temperature).sum(dim=1)
    single_sum = torch.exp(torch.einsum("bd,bkd->bk", anchors, table[single]) / temperature).sum(dim=1)
    loss = -torch.log(multi_sum / every + LOG_EPS) - torch.log(single_sum / (every - multi_sum) + LOG_EPS)
    return loss.mean()


def symmetric_bernoulli_kl(logits_a, logits_b):
    r"""Mean of :math:`KL(\sigma(a) \| \sigma(b)) + KL(\sigma(b) \| \sigma(a))` of Bernoulli
    distributions, entry-wise: :math:`(\sigma(a) - \sigma(b))(a - b)`."""
    return ((torch.sigmoid(logits_a) - torch.sigmoid(logits_b)) * (logits_a - logits_b)).mean()


@torch.no_grad()
def feedback_weights(users, positives, negatives):
    r"""DA-MRS's preference-guided BPR weights (no gradient).

    Args:
        users: (B x d) user vectors.
        positives, negatives: (M x B x d) the positive / negative item of each triple in each of
            the M item views (unit length or not: they are normalised here).

    Returns:
        (w⁺, w⁻): (B,) float tensors in [0, 1] (see the module docstring).
    """
    pos = torch.sigmoid((users * F.normalize(positives, dim=-1)).sum(-1))  # M x B
    neg = torch.sigmoid((users * F.normalize(negatives, dim=-1)).sum(-1))
    pos_mean, neg_mean = pos.mean(dim=0), neg.mean()
    pos_weight = (pos_mean * torch.exp(-pos.var(dim=0)).square()).clamp(0.0, 1.0)
    neg_weight = ((pos.max(dim=0).values - neg_mean) * (pos_mean < neg_mean)).clamp(0.0, 1.0)
    return pos_weight, neg_weight


def denoised_item_graphs(features, inter_matrix, knn_k, behaviour_k, behaviour_min_count, device, cache_dir=None):
    """DA-MRS's three denoised item graphs (see the module docstring), built once and cached.

    Args:
        features: dict modality -> (I x d_m) tensor with at least 'image' and 'text' (row 0 = padding).
        inter_matrix: scipy sparse (U x I) train interactions.

    Returns:
        dict view (:data:`VIEWS`) -> :class:`~recbole_mm.model.layers.FrozenSparse` (I x I) on ``device``.
    """
    modality = consistent_knn_graphs({name: features[name].to(device) for name in ("image", "text")}, knn_k,
                                     cache_dir=cache_dir)
    behaviour = cooccurrence_item_graph(inter_matrix, behaviour_k, behaviour_min_count, cache_dir=cache_dir)
    return {"text": FrozenSparse(modality["text"]), "image": FrozenSparse(modality["image"]),
            "behaviour": FrozenSparse(behaviour.to(device))}


def item_views(graphs, items, layers):
    r"""The item views :math:`h_m = G_m^{L} X` (L = ``layers``) of an (I x d) item table: dict view -> (I x d)."""
    return {name: propagate(graphs[name], items, layers, combine="last") for name in VIEWS}


def triple_weights(user_e, views, pos, neg):
    """:func:`feedback_weights` of the batch's triples: user vectors (B x d), the item views
    (dict view -> (I x d)), positive and negative item ids (B,) -> (w⁺, w⁻), (B,) each."""
    return feedback_weights(user_e, torch.stack([views[name][pos] for name in VIEWS]),
                            torch.stack([views[name][neg] for name in VIEWS]))


class DAMRS(MultiModalRecommender):
    one_modality_refusal = (
        "DA-MRS keeps an item pair only where the image and the text similarities agree, and MMRec's DAMRS "
        "reads both feature tables to do so (on a one-modality folder its constructor stops with an AttributeError)")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if sorted(self.modality_features) != ["image", "text"]:
            raise ConfigError(f"DAMRS needs 'image' and 'text' modalities; got {list(self.modality_features)}."
                              + one_modality_refusal(DAMRS))
        # its BPR terms are weighted by the triple (weighted_bpr): nothing for denoise: tce / rce /
        # bod / damrs to replace, and they say so rather than install a loss that is never called
        del self.bpr_loss
        d = self.embedding_size
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.kl_weight = config["kl_weight"]
        self.neighbor_weight = config["neighbor_weight"]
        self.pseudo_count = min(PSEUDO_POSITIVES, (self.n_items - 1) // 2)
        if self.neighbor_weight and self.pseudo_count < 1:
            raise ConfigError(f"DAMRS's neighbour discrimination needs at least 3 items, the dataset has "
                              f"{self.n_items - 1}; set neighbor_weight: 0")

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.adjacency = FrozenSparse(self.normalized_adjacency(), symmetric=True)
        self.item_graphs = denoised_item_graphs(self.modality_features, self.interaction_matrix, config["knn_k"],
                                                config["damrs_behaviour_k"], config["damrs_behaviour_min_count"],
                                                self.device, cache_dir=self.cache_dir)

    def components(self):
        """(users (U x d), LightGCN items (I x d), dict view -> h_view (I x d))."""
        ego = torch.cat([self.user_embedding, self.item_id_embedding], dim=0)
        users, items = torch.split(propagate(self.adjacency, ego, self.n_ui_layers, combine="mean"),
                                   [self.n_users, self.n_items])
        views = item_views(self.item_graphs, self.item_id_embedding, self.n_mm_layers)
        return users, items, views

    def forward(self):
        users, items, views = self.components()
        return users, items + sum(views.values()) / len(views)

    def item_relation_alignment(self, views, batch_items):
        """:math:`L_{AI}`: the neighbour discrimination of each view, averaged (padding item excluded)."""
        tables = {name: view[1:] for name, view in views.items()}
        positives = view_pseudo_positives({name: view[batch_items] for name, view in views.items()}, tables,
                                          self.pseudo_count)
        losses = [neighbour_discrimination(views[name][batch_items], tables[name], *positives[name])
                  for name in VIEWS]
        return sum(losses) / len(losses)

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        user_all, item_all, views = self.components()
        view_mean = sum(views.values()) / len(views)
        batch_users, batch_items = torch.unique(users), torch.unique(torch.cat([pos, neg]))

        loss = 0.0
        if self.neighbor_weight:
            loss = self.neighbor_weight * self.item_relation_alignment(views, batch_items)
        if self.kl_weight:
            user_e = user_all[batch_users]
            logits_id = user_e @ F.normalize(item_all[batch_items], dim=-1).T
            logits_views = user_e @ F.normalize(view_mean[batch_items], dim=-1).T
            loss = loss + self.kl_weight * symmetric_bernoulli_kl(logits_id, logits_views)

        user_e = user_all[users]
        pos_weight, neg_weight = triple_weights(user_e, views, pos, neg)
        final = item_all + view_mean
        pos_scores, neg_scores = (user_e * final[pos]).sum(-1), (user_e * final[neg]).sum(-1)
        return loss + weighted_bpr(pos_scores, neg_scores, pos_weight, neg_weight)
