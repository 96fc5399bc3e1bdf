r"""The computations of GUIDER (Teach Me How to Denoise, WSDM 2025, §4) as plain functions on
tensors, so that each can be tested alone; :class:`~recbole_mm.trainer.guider.GUIDERTrainer`
wires them into training.

- :func:`fit_cross_modal_hash` / :func:`hash_confidence`: :math:`S_{conf}(i)` (Eq. 6).
- :func:`per_interaction_loss`, :func:`loss_split`, :func:`amsc_split`: AMSC (Eq. 2–5).
- :func:`row_transport_kd` (the default), :func:`row_kl_kd`: the KD losses (Eq. 8–15) between
  the teacher's and the student's score rows of the batch users;
  :func:`pairwise_logits`, :func:`sinkhorn_kd`: the literal pair-logit reading, kept as the
  ``ot_pairs`` ablation.

Interactions are identified by the key ``user * n_items + item`` (int64), sorted where a
function says so; every function is vectorised over users and interactions.

POT (``ot``) is imported by the two functions that call its Sinkhorn, not here: it imports
scikit-learn and ``scipy.stats`` (about 70 MB resident), which a run without transport
(``guider_kd: matched``, the default, or no GUIDER at all) never needs.
"""
import numpy as np
import torch
import torch.nn.functional as F

from recbole_mm.errors import ConfigError, DataError
from recbole_mm.model.layers import scatter_mean
from recbole_mm.options import ROW_TRANSFORMS, SPLIT_SCORES, THRESHOLD_MODES


# --------------------------------------------------------------------------- Eq. 6
def _inverse_sqrt(covariance, ridge):
    values, vectors = torch.linalg.eigh(covariance + ridge * torch.eye(len(covariance), dtype=covariance.dtype))
    return vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T


def _principal_basis(centred, dims):
    """(d x k) orthonormal basis of the top-k principal directions (k = min(dims, d))."""
    if centred.shape[1] <= dims:
        return torch.eye(centred.shape[1], dtype=centred.dtype)
    _, _, v = torch.svd_lowrank(centred, q=dims, niter=4)
    return v


def fit_cross_modal_hash(text, image, bits=64, pca_dims=256, ridge=1e-3):
    r"""Fit :math:`W, b` of :math:`\mathrm{hash}(x) = \mathrm{sign}(W^\top x + b)` for both
    modalities so that they share one code space (Eq. 6).

    The paper does not say how W, b are obtained (the public code leaves them random, so the
    codes of an item's text and image agree only by chance). Here they come from canonical
    correlation analysis between the two feature matrices: after an optional PCA to
    ``pca_dims`` per modality, bit k is the k-th canonical direction of each modality, so an
    item whose text and image are consistent gets matching bits, and
    :math:`b = -\mu^\top W` centres every bit at the catalogue mean.

    Args:
        text, image: (N x d_t), (N x d_v) item features (the rows to fit on).
        bits: code length (at most min(d_t, d_v, pca_dims)).
        ridge: added to each whitened covariance's diagonal, relative to its mean variance.

    Returns:
        ((W_t, b_t), (W_v, b_v)): (d_t x bits, bits) and (d_v x bits, bits), float32.
    """
    projections = []
    whitened = []
    for features in (text, image):
        x = features.double()
        mean = x.mean(0)
        centred = x - mean
        basis = _principal_basis(centred, pca_dims)
        reduced = centred @ basis
        covariance = reduced.T @ reduced / max(len(reduced) - 1, 1)
        scale = covariance.diagonal().mean().clamp_min(1e-12)
        inv_sqrt = _inverse_sqrt(covariance, ridge * scale)
        projections.append((mean, basis, inv_sqrt))
        whitened.append(reduced @ inv_sqrt)
    cross = whitened[0].T @ whitened[1] / max(len(text) - 1, 1)
    u, _, vh = torch.linalg.svd(cross)
    bits = min(bits, u.shape[1], vh.shape[0])
    directions = (u[:, :bits], vh.T[:, :bits])
    result = []
    for (mean, basis, inv_sqrt), direction in zip(projections, directions):
        weight = basis @ inv_sqrt @ direction
        result.append((weight.float(), (-(mean @ weight)).float()))
    return tuple(result)


def hash_codes(features, weight, bias):
    r""":math:`\mathrm{sign}(W^\top x + b)`, (N x bits) of ±1 (0 only on an exact tie)."""
    return torch.sign(features.float() @ weight.to(features.device) + bias.to(features.device))


def hash_confidence(text, image, hash_params):
    r""":math:`S_{conf}(i) = \cos(\mathrm{hash}(T_i), \mathrm{hash}(V_i))` (Eq. 6), (N,)."""
    (w_t, b_t), (w_v, b_v) = hash_params
    return F.cosine_similarity(hash_codes(text, w_t, b_t), hash_codes(image, w_v, b_v), dim=1, eps=1e-12)


# --------------------------------------------------------------------------- Eq. 2-5
def per_interaction_loss(user_embeddings, item_embeddings, users, items, score="logsigmoid", n_negatives=4,
                         generator=None, chunk=1 << 12):
    r""":math:`\mathcal L_{Rec}(u, i)` of every train interaction under the teacher (Eq. 2).

    ``score`` chooses the per-interaction loss:

    - ``logsigmoid`` (default): :math:`-\log \sigma(s_{ui})`, deterministic, O(E d);
    - ``rank``: the share of the catalogue the teacher ranks above i for u, deterministic,
      O(E I d) in chunks of ``chunk`` interactions;
    - ``bpr``: BPR against ``n_negatives`` uniformly drawn items, averaged (the first port's
      reading; the random negatives make the split noisy: AUC 0.80 for catching injected
      pairs on the bundled dataset against 0.86 for the raw score).

    Args:
        user_embeddings, item_embeddings: (U x d), (I x d) teacher representations.
        users, items: (E,) interactions.

    Returns:
        (E,) float tensor, larger = more suspicious.
    """
    if score not in SPLIT_SCORES:
        raise ConfigError(f"guider_split_score must be one of {SPLIT_SCORES}, got {score!r}")
    n_items = item_embeddings.shape[0]
    if score == "logsigmoid":
        return -F.logsigmoid((user_embeddings[users] * item_embeddings[items]).sum(-1))
    losses = []
    for start in range(0, len(users), chunk):
        u = user_embeddings[users[start:start + chunk]]
        positive = (u * item_embeddings[items[start:start + chunk]]).sum(-1, keepdim=True)
        if score == "rank":
            losses.append((u @ item_embeddings[1:].T > positive).float().mean(1))
            continue
        negatives = torch.randint(1, n_items, (len(u), n_negatives), device=u.device, generator=generator)
        negative = torch.einsum("ed,end->en", u, item_embeddings[negatives])
        losses.append(-F.logsigmoid(positive - negative).mean(1))
    return torch.cat(losses) if losses else torch.zeros(0, device=user_embeddings.device)


def loss_split(users, losses, n_users):
    r"""Eq. 2: reliable = :math:`\mathcal L(u, i) \le` the mean loss of u's interactions,
    spurious otherwise. Returns the reliable mask, (E,) bool."""
    mean = scatter_mean(losses, users, n_users)
    return losses <= mean[users]


def _extreme_similarities(spurious_items, reliable_lists, modalities):
    """For rows with k reliable items each: the max and min over the k of
    max_m cos_m(spurious item, reliable item).

    Args:
        spurious_items: (n,) item of each spurious row.
        reliable_lists: (n, k) the reliable items of the row's user.
        modalities: list of (I x d) L2-normalised feature matrices.

    Returns:
        (highest (n,), lowest (n,)).
    """
    similarity = None
    for features in modalities:
        sims = torch.bmm(features[reliable_lists], features[spurious_items].unsqueeze(2)).squeeze(2)
        similarity = sims if similarity is None else torch.maximum(similarity, sims)
    return similarity.amax(1), similarity.amin(1)


class UserPairSimilarity:
    r""":math:`S_{modal}(i, i') = \max_m \cos_m(i, i')` for every pair of train interactions
    of the same user, computed once (the features never change; only which interactions are
    reliable does), so that each calibration is a masked scatter-max over the pairs instead of
    a gather of (suspects x reliable x d) features.

    Users are grouped by their number of interactions n; each group's (g x n x d) features
    are gathered in chunks of at most ``element_budget`` values and multiplied batch-wise,
    giving every user's n x n block. Σ_u n_u² values are kept (2.3 M on Amazon Sports);
    :meth:`build` returns ``None`` above ``pair_budget``, and AMSC then scores each
    calibration's pairs directly.
    """

    def __init__(self, first, second, similarity):
        self.first, self.second, self.similarity = first, second, similarity  # (P,) rows, rows, values

    @classmethod
    def build(cls, users, modalities, items, pair_budget=1 << 26, element_budget=1 << 26):
        counts = torch.bincount(users)
        if int((counts.long() ** 2).sum()) > pair_budget:
            return None
        order = torch.argsort(users, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = sum(m.shape[1] for m in modalities)
        firsts, seconds, values = [], [], []
        for n in torch.unique(counts[counts > 1]).tolist():
            group_users = torch.nonzero(counts == n).squeeze(1)
            per_chunk = max(1, element_budget // (n * width))
            for start in range(0, len(group_users), per_chunk):
                chunk = group_users[start:start + per_chunk]
                rows = order[starts[chunk].unsqueeze(1) + torch.arange(n, device=users.device)]  # (g x n)
                block = None
                for features in modalities:
                    gathered = features[items[rows]]
                    sims = torch.bmm(gathered, gathered.transpose(1, 2))
                    block = sims if block is None else torch.maximum(block, sims)
                off_diagonal = ~torch.eye(n, dtype=torch.bool, device=users.device)
                firsts.append(rows.unsqueeze(2).expand(-1, n, n)[:, off_diagonal].reshape(-1))
                seconds.append(rows.unsqueeze(1).expand(-1, n, n)[:, off_diagonal].reshape(-1))
                values.append(block[:, off_diagonal].reshape(-1))
        if not values:
            empty = torch.zeros(0, dtype=torch.long, device=users.device)
            return cls(empty, empty, torch.zeros(0, device=users.device))
        return cls(torch.cat(firsts), torch.cat(seconds), torch.cat(values))

    def extremes(self, spurious, reliable):
        """Per interaction, the max and min of S_modal over the reliable interactions of the
        same user (-inf / +inf where there is none); rows not in ``spurious`` are not scored.

        Args:
            spurious, reliable: (E,) bool.

        Returns:
            (highest (E,), lowest (E,)).
        """
        mask = spurious[self.first] & reliable[self.second]
        rows, values = self.first[mask], self.similarity[mask]
        size = len(spurious)
        highest = torch.full((size,), -float("inf"), device=values.device)
        lowest = torch.full((size,), float("inf"), device=values.device)
        highest.scatter_reduce_(0, rows, values, "amax")
        lowest.scatter_reduce_(0, rows, values, "amin")
        return highest, lowest


def amsc_similarity(users, items, reliable, modalities, confidence, n_users, spurious_rows=None,
                    element_budget=1 << 26, pairs=None):
    r"""Eq. 3–5's score of each spurious interaction (u, i):
    :math:`\max_{i'} S(i, i')` over the reliable items i' of u, with
    :math:`S(i, i') = \max(\cos_t(i, i'), \cos_v(i, i')) \cdot S_{conf}(i)`.

    The max of the product is :math:`S_{conf}(i) \cdot \max_{i'} S_{modal}` when the
    confidence is non-negative and :math:`S_{conf}(i) \cdot \min_{i'} S_{modal}` when it is
    negative. The rows are grouped by the number k of reliable items of their user (a loop over
    distinct k, not over users); each group gathers its (rows x k x d) reliable features in
    chunks of at most ``element_budget`` values and scores them with one batched matrix product.

    Args:
        users, items: (E,) int64 interactions.
        reliable: (E,) bool, the loss split (Eq. 2).
        modalities: list of (I x d) L2-normalised item feature matrices (text, vision).
        confidence: (I,) :math:`S_{conf}`.
        spurious_rows: the rows to score (default: every unreliable row).
        pairs: a :class:`UserPairSimilarity` of these interactions: the same scores from
            the precomputed pairs, without touching the features.

    Returns:
        (spurious_rows (n,), score (n,)); -inf for a user without reliable items.
    """
    if spurious_rows is None:
        spurious_rows = torch.nonzero(~reliable).squeeze(1)
    conf = confidence[items[spurious_rows]]
    if pairs is not None:
        wanted = torch.zeros_like(reliable)
        wanted[spurious_rows] = True
        highest, lowest = pairs.extremes(wanted, reliable)
        score = torch.where(conf >= 0, conf * highest[spurious_rows], conf * lowest[spurious_rows])
        return spurious_rows, torch.nan_to_num(score, nan=-float("inf"))
    reliable_rows = torch.nonzero(reliable).squeeze(1)
    order = torch.argsort(users[reliable_rows], stable=True)
    reliable_items = items[reliable_rows][order]
    reliable_counts = torch.bincount(users[reliable_rows], minlength=n_users)
    reliable_starts = torch.cumsum(reliable_counts, 0) - reliable_counts
    spurious_users = users[spurious_rows]
    counts = reliable_counts[spurious_users]
    highest = torch.full((len(spurious_rows),), -float("inf"), device=users.device)
    lowest = torch.full((len(spurious_rows),), float("inf"), device=users.device)
    width = sum(m.shape[1] for m in modalities)
    for k in torch.unique(counts).tolist():
        if k == 0:  # no reliable item: nothing can vouch for it
            continue
        group = torch.nonzero(counts == k).squeeze(1)
        rows_per_chunk = max(1, element_budget // (k * width))
        for start in range(0, len(group), rows_per_chunk):
            chunk = group[start:start + rows_per_chunk]
            positions = reliable_starts[spurious_users[chunk]].unsqueeze(1) + torch.arange(k, device=users.device)
            high, low = _extreme_similarities(items[spurious_rows[chunk]], reliable_items[positions], modalities)
            highest[chunk], lowest[chunk] = high, low
    score = torch.where(conf >= 0, conf * highest, conf * lowest)
    return spurious_rows, torch.nan_to_num(score, nan=-float("inf"))


def amsc_split(users, items, reliable, modalities, confidence, threshold, n_users, mode="absolute",
               element_budget=1 << 26, pairs=None):
    r"""Eq. 3–5: move a spurious interaction (u, i) back to the clean set when its
    :func:`amsc_similarity` exceeds :math:`S_{thres}`.

    ``mode`` says what ``threshold`` is:

    - ``absolute``: :math:`S_{thres}` itself (the paper's reading). Its useful range depends
      on the features and the hash (a value tuned on one dataset returned 99% of the suspects
      to clean on Amazon Baby), so it does not transfer.
    - ``quantile`` (packaged): :math:`S_{thres}` is the ``threshold``-quantile of the
      suspects' own scores, so a share ``threshold`` of the loss-split suspects (those least
      like the user's reliable items) stays in :math:`I_{false}` and the rest returns to
      clean, whatever the scale of S on the dataset.

    Under ``absolute`` with :math:`S_{thres} \ge 0`, a suspect with
    :math:`|S_{conf}(i)| \le S_{thres}` can never move (:math:`|S_{modal}| \le 1`) and is
    not scored. ``pairs``: see :func:`amsc_similarity`.

    Returns:
        (E,) bool, the clean set :math:`I_{true}` (the rest is :math:`I_{false}`).
    """
    if mode not in THRESHOLD_MODES:
        raise ConfigError(f"guider_threshold_mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    clean = reliable.clone()
    spurious_rows = torch.nonzero(~reliable).squeeze(1)
    if mode == "absolute" and threshold >= 0:
        spurious_rows = spurious_rows[confidence[items[spurious_rows]].abs() > threshold]
    if len(spurious_rows) == 0 or not modalities:
        return clean
    spurious_rows, score = amsc_similarity(users, items, reliable, modalities, confidence, n_users, spurious_rows,
                                           element_budget, pairs)
    if mode == "quantile":
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"guider_threshold is a quantile under guider_threshold_mode: quantile; got {threshold}")
        kept = int(round(threshold * len(score)))  # the `kept` lowest scores stay in I_false
        order = torch.argsort(score, stable=True)
        clean[spurious_rows[order[kept:]]] = True
        return clean
    clean[spurious_rows] = score > threshold
    return clean


# --------------------------------------------------------------------------- Eq. 8-15
def pairwise_logits(user_e, pos_e, neg_e):
    r""":math:`z = \log \sigma(s_{ui} - s_{uj})` per (u, i, j) row, (B,)."""
    return F.logsigmoid((user_e * pos_e).sum(-1) - (user_e * neg_e).sum(-1))


def sinkhorn_plan(teacher_logits, student_logits, reg, n_iterations=100, stop=1e-7, dtype=torch.float32):
    r"""``guider_kd: ot_pairs``, the literal reading of Eq. 9–15 that the authors never ran:
    the entropic OT plan :math:`P_\lambda` and the cost D between the batch's scalar pair
    logits, each pair one point of a 1-D measure. It compares the two histograms of logit
    values and carries no pair identity: a permuted student gives the same loss, and at
    :math:`\lambda` = 0.1 it acts as a variance penalty that collapses the student's margins
    (it lowered every student on the bundled dataset). Kept as an ablation.

    Marginals: the paper's "logits distributions" must be probability vectors, so the
    pairwise logits are normalised with a softmax over the batch,
    :math:`a = \mathrm{softmax}(z^t)` (rows), :math:`b = \mathrm{softmax}(z^s)` (columns).
    Cost :math:`D_{mn} = (z^t_m - z^s_n)^2`.

    POT's Sinkhorn (torch backend) runs in the log domain (``sinkhorn_log``): the scalings
    :math:`u = a \oslash K v`, :math:`v = b \oslash K^\top u` of Eq. 12–13 are carried as
    log-potentials, the same plan (Eq. 15) without ever forming a tiny :math:`Kv`. The plain
    scaling iterations are not safe here: a teacher logit far from every student logit makes
    its :math:`u_m` grow without bound, and although the forward pass stays finite, the
    backward pass through :math:`a / (Kv)` then overflows to NaN in float32 (about one batch
    in six of the shape GUIDER meets on the bundled dataset with injected noise). Autograd
    follows the iterations, so P is differentiable in the student's logits (the teacher's are
    detached).

    Returns:
        (P (B x B) in ``dtype``, D (B x B) float32).
    """
    teacher_logits = teacher_logits.detach()
    cost = (teacher_logits[:, None] - student_logits[None, :]) ** 2
    a = torch.softmax(teacher_logits.to(dtype), 0)
    b = torch.softmax(student_logits.to(dtype), 0)
    import ot

    plan = ot.sinkhorn(a, b, cost.to(dtype), reg, method="sinkhorn_log", numItermax=n_iterations, stopThr=stop,
                       warn=False)
    return plan, cost


def sinkhorn_kd(teacher_logits, student_logits, reg, n_iterations=100):
    r""":math:`\mathcal L_{KD} = \langle P_\lambda, D \rangle` (Eq. 9)."""
    plan, cost = sinkhorn_plan(teacher_logits, student_logits, reg, n_iterations)
    return (plan.float() * cost).sum()


def transform_rows(scores, transform="zscore"):
    r"""What the score rows of teacher and student are compared as, (B x N) -> (B x N).

    - ``center``: :math:`s_u - \mathrm{mean}_i s_{ui}`; the squared distance between two
      centred rows is a sum over item pairs of the differences of :math:`s_{ui} - s_{uj}`
      (the ranking information), blind to a per-user offset;
    - ``zscore``: centred and divided by the row's standard deviation, blind to the scale of
      each model's scores too (the cost is then N (1 - Pearson correlation) per pair of rows);
    - ``softmax``: the per-user distribution over the items;
    - ``raw``: the scores as they are (the authors' compiled trainer).
    """
    if transform == "center":
        return scores - scores.mean(1, keepdim=True)
    if transform == "zscore":
        centred = scores - scores.mean(1, keepdim=True)
        return centred / centred.std(1, keepdim=True).clamp_min(1e-8)
    if transform == "softmax":
        return torch.softmax(scores, 1)
    if transform == "raw":
        return scores
    raise ConfigError(f"guider_kd_transform must be one of {ROW_TRANSFORMS}, got {transform!r}")


def half_squared_distances(x, y):
    r""":math:`C_{mn} = \tfrac12 \lVert x_m - y_n \rVert^2`, (M x d), (N x d) -> (M x N)."""
    cost = 0.5 * (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None, :]) - x @ y.T
    return cost.clamp_min(0)


def _entropic_plan(cost, reg, n_iterations):
    """Uniform-marginal entropic OT plan of ``cost`` (no gradient): POT's log-domain Sinkhorn
    on the torch backend."""
    n, m = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
    b = torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device)
    import ot

    return ot.sinkhorn(a, b, cost.detach(), reg, method="sinkhorn_log", numItermax=n_iterations, stopThr=1e-6,
                       warn=False)


def row_transport_kd(teacher_rows, student_rows, reg=0.01, n_iterations=100, transform="zscore"):
    r"""GUIDER's distillation (Eq. 9–15, from SinKD) between the B teacher and the B student
    score rows of the batch users, each row one point of :math:`\mathbb R^N` with mass 1/B
    (the authors' compiled trainer: a debiased Sinkhorn divergence between the student's and
    the teacher's full-sort score rows, squared Euclidean cost, weight 1).

    With :math:`z = ` :func:`transform_rows` of each side, :math:`C_{mn} = \tfrac12 \lVert
    z^t_m - z^s_n \rVert^2` (Eq. 10) and :math:`P_\epsilon` the entropic plan with uniform
    marginals (Eq. 11–15, solved by POT's log-domain Sinkhorn),

    .. math::
        \mathcal L_{KD} = \frac1N \Big( \langle P^{ts}, C^{ts} \rangle
        - \tfrac12 \langle P^{ss}, C^{ss} \rangle - \tfrac12 \langle P^{tt}, C^{tt} \rangle \Big)

    (debiased, so identical rows give 0). :math:`\epsilon` = ``reg`` x mean(:math:`C^{ts}`),
    relative to the cost's scale; with a small ``reg`` the plan is the identity matching once
    the student resembles the teacher. The term carries item identity (the columns), but not
    user identity: it is OT between two *sets* of rows with uniform weights, so permuting the
    student's rows among the batch users leaves it unchanged (only the plan moves off its
    diagonal); it pulls the batch's set of student rows onto the teacher's. The plans are computed without gradient and the cost keeps
    its: by the envelope theorem this is the gradient of the entropic OT objective (what
    geomloss does), without back-propagating through the iterations. The 1/N keeps the term
    at the scale of one item's squared score gap.

    Args:
        teacher_rows: (B x N) teacher scores (no gradient needed).
        student_rows: (B x N) student scores, with gradient.

    Returns:
        (loss (scalar), diagonal mass of :math:`P^{ts}` (float): the share of the transport
        that maps each user's student row to the same user's teacher row; a diagnostic, the
        loss does not depend on it).
    """
    teacher = transform_rows(teacher_rows.detach().float(), transform)
    student = transform_rows(student_rows.float(), transform)
    cost = half_squared_distances(teacher, student)
    epsilon = float(reg * cost.detach().mean().clamp_min(1e-12))
    plan = _entropic_plan(cost, epsilon, n_iterations)
    cost_ss = half_squared_distances(student, student)
    with torch.no_grad():
        cost_tt = half_squared_distances(teacher, teacher)
        self_teacher = (_entropic_plan(cost_tt, epsilon, n_iterations) * cost_tt).sum()
    self_student = (_entropic_plan(cost_ss, epsilon, n_iterations) * cost_ss).sum()
    loss = ((plan * cost).sum() - 0.5 * self_student - 0.5 * self_teacher) / teacher.shape[1]
    return loss, float(plan.diagonal().sum())


def row_matched_kd(teacher_rows, student_rows, transform="zscore"):
    r"""Per-user matching in place of :func:`row_transport_kd` (``guider_kd: matched``): each
    user's student row is pulled onto the *same* user's teacher row, the transport plan fixed
    to the identity :math:`I / B`,

    .. math::
        \mathcal L_{KD} = \frac1{BN} \sum_u \tfrac12 \lVert z^t_u - z^s_u \rVert^2

    with :math:`z` = :func:`transform_rows` of each side (the debiasing terms of the
    transport vanish: an identity plan has zero self-cost). Unlike the transport it carries
    user identity: permuting the student's rows changes it.

    Args:
        teacher_rows: (B x N) teacher scores (no gradient needed).
        student_rows: (B x N) student scores, with gradient.

    Returns:
        (loss (scalar), 1.0: the plan's diagonal mass, for the same log as the transport).
    """
    teacher = transform_rows(teacher_rows.detach().float(), transform)
    student = transform_rows(student_rows.float(), transform)
    return 0.5 * (teacher - student).pow(2).sum(1).mean() / teacher.shape[1], 1.0


def row_kl_kd(teacher_rows, student_rows):
    r""":math:`\mathrm{KL}(\mathrm{softmax}(T_u) \,\Vert\, \mathrm{softmax}(S_u))` over the
    items, averaged over the batch users (the authors' HEAD trainer), (B x N) -> scalar."""
    return F.kl_div(F.log_softmax(student_rows, 1), F.log_softmax(teacher_rows.detach(), 1), log_target=True,
                    reduction="batchmean")


def sample_from_sets(users, set_keys, n_items, generator=None):
    r"""One item per row drawn uniformly from that row's user's set (DBPR's :math:`j \in
    I_{false}^{(u)}`).

    Args:
        users: (B,) int64.
        set_keys: sorted (K,) int64 keys ``user * n_items + item`` of the sets.

    Returns:
        (items (B,), has_any (B,) bool): rows whose user's set is empty get item 0 and False.
    """
    start = torch.searchsorted(set_keys, users * n_items)
    stop = torch.searchsorted(set_keys, (users + 1) * n_items)
    size = stop - start
    has_any = size > 0
    draw = (torch.rand(len(users), device=users.device, generator=generator) * size).long()
    index = (start + draw).clamp_max(max(len(set_keys) - 1, 0))
    items = torch.where(has_any, set_keys[index] % n_items if len(set_keys) else torch.zeros_like(users),
                        torch.zeros_like(users))
    return items, has_any


def key_membership(users, items, sorted_keys, n_items):
    """(B,) bool: whether each (user, item) is in the sorted key set."""
    if sorted_keys is None or len(sorted_keys) == 0:
        return torch.zeros(len(users), dtype=torch.bool, device=users.device)
    keys = users * n_items + items
    position = torch.searchsorted(sorted_keys, keys).clamp_max(len(sorted_keys) - 1)
    return sorted_keys[position] == keys


def sample_unobserved(users, candidates, observed_keys, n_items, generator=None, max_rounds=1000):
    r"""One negative item per row, drawn uniformly from ``candidates`` and redrawn while
    (user, item) is an observed pair (MMRec's training sampler, vectorised: only the rows that
    hit an observed pair are redrawn, each round).

    Args:
        users: (B,) int64.
        candidates: (C,) int64 items to draw from (MMRec: the items seen in training).
        observed_keys: sorted (K,) int64 keys ``user * n_items + item`` never to return.

    Returns:
        (B,) int64 items; a ValueError when a row finds no unobserved candidate in
        ``max_rounds`` rounds (a user who has seen every candidate).
    """
    def draw(count):
        return candidates[torch.randint(len(candidates), (count,), device=users.device, generator=generator)]

    items = draw(len(users))
    pending = torch.nonzero(key_membership(users, items, observed_keys, n_items)).squeeze(1)
    for _ in range(max_rounds):
        if len(pending) == 0:
            return items
        items[pending] = draw(len(pending))
        pending = pending[key_membership(users[pending], items[pending], observed_keys, n_items)]
    raise DataError(f"no unobserved negative found for users {users[pending][:10].tolist()} in {max_rounds} "
                     "draws: they have interacted with (nearly) every candidate item")


# --------------------------------------------------------------------------- loss weighting
def min_norm_two(g11, g22, g12):
    r"""The two-task min-norm weight (MGDA, Sener & Koltun 2018) from the three inner
    products of the task gradients :math:`g_1, g_2`:

    .. math::
        \gamma^* = \arg\min_{\gamma \in [0, 1]} \lVert \gamma g_1 + (1 - \gamma) g_2 \rVert^2
                 = \mathrm{clip}\Big(\frac{g_2 \cdot g_2 - g_1 \cdot g_2}
                                        {g_1 \cdot g_1 + g_2 \cdot g_2 - 2\, g_1 \cdot g_2}, 0, 1\Big)

    (the norm is a convex quadratic in γ, with derivative 2[γ‖g₁−g₂‖² − (g₂·g₂ − g₁·g₂)]).
    When g₁ = g₂ (zero denominator) every γ is optimal: 0.5 is returned. The authors' solver
    (``_min_norm_2d`` of their MinNormSolver) gives the same γ, clipped to [0.001, 0.999].

    Args:
        g11, g22, g12: floats or 0-d tensors, g₁·g₁, g₂·g₂, g₁·g₂.

    Returns:
        γ* as a float: the weight of task 1 (task 2 gets 1 − γ*).
    """
    g11, g22, g12 = float(g11), float(g22), float(g12)
    denominator = g11 + g22 - 2.0 * g12
    if not denominator > 1e-20 * max(g11 + g22, 1e-30):
        return 0.5
    return min(1.0, max(0.0, (g22 - g12) / denominator))


def mgda_weights(student_gradient, kd_gradient, min_student=0.5, min_kd=1e-4, sum_quirk=False):
    r"""GUIDER's per-batch loss weights (w_student, w_kd) by MGDA, as the authors' trainer
    computes them: γ* of :func:`min_norm_two` on the student-loss gradient g_s and the
    KD gradient g_kd (flat vectors over the student's parameters), w_student = max(γ*,
    ``min_student``), w_kd = max(1 − γ*, ``min_kd``) (clamped, not renormalised).

    ``sum_quirk``: the authors' trainer calls ``backward()`` on the KD loss without zeroing
    the gradients of the student loss first, so its second "gradient" is g_s + g_kd; this
    reproduces it (γ* from g_s and g_s + g_kd).
    """
    second = student_gradient + kd_gradient if sum_quirk else kd_gradient
    gamma = min_norm_two(student_gradient @ student_gradient, second @ second, student_gradient @ second)
    return max(gamma, min_student), max(1.0 - gamma, min_kd)


def flat_gradient(loss, parameters):
    """d loss / d parameters as one flat dense vector (zeros for parameters that the loss does
    not reach; sparse gradients densified; all zeros for a loss that reaches none, e.g. a
    constant), the graph kept for a later backward."""
    if not loss.requires_grad:
        return torch.cat([torch.zeros_like(p).reshape(-1) for p in parameters])
    gradients = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g.to_dense() if g.is_sparse else g).reshape(-1)
                      for p, g in zip(parameters, gradients)])


def per_user_metric(evaluator, struct, metric):
    """Each evaluated user's value of a top-k metric (``"recall@20"``, ``"ndcg@10"``, ...), whose
    mean is RecBole's figure, from an evaluation's data struct; None for any other metric.

    Args:
        evaluator: RecBole's ``Evaluator`` (its metric objects); struct: the collector's
            ``DataStruct`` of one evaluation.

    Returns:
        (n_users,) float64 array, or None.
    """
    name, _, k = metric.lower().partition("@")
    scorer = evaluator.metric_class.get(name)
    if scorer is None or not k.isdigit() or not hasattr(scorer, "metric_info"):
        return None
    return np.asarray(scorer.metric_info(*scorer.used_info(struct))[:, int(k) - 1], dtype=np.float64)


def paired_difference(candidate, reference):
    """Mean of the per-user differences d = candidate - reference (same users, same order) and
    its standard error std(d) / sqrt(n) (0 below two users; mean 0 for none)."""
    difference = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if len(difference) < 2:
        return float(difference.sum()), 0.0
    return float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference)))


def clearly_better(candidate, reference, z):
    """Whether per-user values ``candidate`` beat ``reference`` by more than ``z`` standard
    errors of the mean paired difference (:func:`paired_difference`): a one-sided paired
    z-test, mean(d) > z * se(d).

    Args:
        candidate, reference: (n,) arrays; z: float >= 0 (0: the larger mean wins).
    """
    mean, standard_error = paired_difference(candidate, reference)
    return mean > z * standard_error


class SafeKDWeight:
    r"""``guider_kd_weight: auto``: the KD weight, lowered on valid once the student has caught
    up with its teacher (a deviation from the paper, whose weight is fixed at 1).

    At each evaluation on valid the trainer passes the student's score and the teacher's (same
    metric, same split). The weight starts at ``start`` and is multiplied by ``decay`` after every
    evaluation at which the student's best score so far is at least the teacher's current one.
    Below ``floor`` it is 0 for good (the trainer then stops training the teacher); it never rises
    again. A student below its teacher keeps the full weight: the teacher still ranks better than
    it does. A student that has caught up is released step by step: matching a weaker teacher's
    score rows now pulls it towards the teacher's level (DRAGON on the bundled dataset: 0.418 test
    Recall@20 alone, 0.357 under a fixed weight 1; its valid score under KD trails its plain run
    from the first epochs, 0.30 against 0.34 at epoch 3, while its teacher is at 0.28), and
    waiting until it also stalls leaves it near the teacher for most of the budget. The
    checkpoint is still the best valid epoch, so a decay never lowers the selected model's valid
    score: it only gives the remaining epochs to the student's own loss.
    """

    def __init__(self, start=1.0, decay=0.1, floor=1e-3):
        self.start = self.weight = float(start)
        self.decay = float(decay)
        self.floor = float(floor)
        self.best = -float("inf")
        self.history = []

    def update(self, student_score, teacher_score=None, bigger=True):
        """One evaluation: update and return the weight (``bigger``: larger scores are better)."""
        sign = 1.0 if bigger else -1.0
        self.best = max(self.best, sign * float(student_score))
        caught_up = teacher_score is not None and self.best >= sign * float(teacher_score)
        if self.weight and caught_up:
            self.weight *= self.decay
            if self.weight < self.floor:
                self.weight = 0.0
        self.history.append({"student": float(student_score), "teacher": None if teacher_score is None
                             else float(teacher_score), "weight": self.weight})
        return self.weight
