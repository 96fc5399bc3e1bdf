"""Losses shared by the plugin's models.

``BPRLoss`` (−mean log(1e-10 + σ(s⁺ − s⁻))) and ``EmbLoss`` (Σ‖E‖₂ over the given tensors,
not squared, divided by the rows of the last one) are RecBole's and equal MMRec's helpers of
the same names, so they are re-exported rather than rewritten.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint
from recbole.model.loss import BPRLoss, EmbLoss

from recbole_mm.errors import ConfigError


def cosine_loss(online, target):
    """1 − mean cosine similarity of matching rows, (B x d), (B x d) -> scalar; no gradient
    reaches ``target`` (BYOL-style bootstrapping: BM3, SelfCF)."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


_EXP_SAFE_BOUND = 50.0  # e^50 * 2^31 rows < 3.4e38, float32's largest value


def _exp_in_place(blocks, bound):
    """Exponentiate the (B x ·) logit blocks in place. Up to ``_EXP_SAFE_BOUND`` for ``bound`` (a
    number no logit exceeds in absolute value) the exps are taken as they are: no extra pass over
    the blocks; above it, or with ``None``, each row's maximum over all blocks is subtracted first.
    Returns the (B,) shift subtracted (0.0 without one): log Σ exp(logits) = log Σ blocks + shift."""
    if bound is not None and bound <= _EXP_SAFE_BOUND:
        shift = 0.0
    else:
        shift = torch.stack([block.max(dim=1).values for block in blocks]).max(dim=0).values
        for block in blocks:
            block.sub_(shift.unsqueeze(1))
    for block in blocks:
        block.exp_()
    return shift


class _InBatchNCE(torch.autograd.Function):
    r""":math:`\frac1B \sum_i [\log \sum_j \exp(a_i^\top p_j) - a_i^\top p_i]` with its gradient
    written out: :math:`\partial/\partial a_i = \frac1B(\sum_j s_{ij} p_j - p_i)`,
    :math:`\partial/\partial p_j = \frac1B(\sum_i s_{ij} a_i - a_j)`, s the row softmax.

    The (B x B) logits are exponentiated in place and kept as the softmax: one matmul, one exp
    and two cheap passes forward, two matmuls backward. Autograd's cross-entropy takes a
    log-softmax, a dense zero-filled target gradient and a log-softmax backward over the same
    (B x B) block (about 2x the time on the CPU at B = 2048, where in-batch InfoNCE was
    two thirds of an MGCN / SMORE epoch).

    ``bound``: a number no logit exceeds in absolute value (1/τ for cosine logits, ``None`` for
    unbounded dot products), which decides whether the exps need a max shift
    (:func:`_exp_in_place`).
    """

    @staticmethod
    def forward(ctx, anchor, positive, bound):
        softmax = anchor @ positive.T
        shift = _exp_in_place([softmax], bound)
        total = softmax.sum(dim=1, keepdim=True)
        loss = (total.log().squeeze(1) + shift - (anchor * positive).sum(dim=1)).mean()
        softmax.div_(total)
        ctx.save_for_backward(anchor, positive, softmax)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        anchor, positive, softmax = ctx.saved_tensors
        scale = grad / anchor.shape[0]
        return (softmax @ positive - positive) * scale, (softmax.T @ anchor - anchor) * scale, None


class _TableNCE(torch.autograd.Function):
    r""":math:`\sum_i [\log \sum_j \exp(a_i^\top t_j) - a_i^\top t_{y_i}]` over a whole table of
    candidates (B anchors x N rows), with its gradient written out as :class:`_InBatchNCE`'s:
    :math:`\partial/\partial a_i = \sum_j s_{ij} t_j - t_{y_i}`,
    :math:`\partial/\partial t_j = \sum_i s_{ij} a_i - \sum_{i: y_i = j} a_i`, s the row softmax.
    Against ``F.cross_entropy`` it skips the zero-filled (B x N) target gradient and the
    log-softmax backward (LGMRec's all-users term: B x 35,598 on Sports). ``bound`` as there."""

    @staticmethod
    def forward(ctx, anchor, table, targets, bound):
        softmax = anchor @ table.T
        positive = softmax.gather(1, targets.unsqueeze(1)).squeeze(1)
        shift = _exp_in_place([softmax], bound)
        total = softmax.sum(dim=1, keepdim=True)
        loss = (total.log().squeeze(1) + shift - positive).sum()
        softmax.div_(total)
        ctx.save_for_backward(anchor, table, targets, softmax)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        anchor, table, targets, softmax = ctx.saved_tensors
        grad_anchor = softmax @ table - table[targets]
        grad_table = (softmax.T @ anchor).index_add_(0, targets, anchor, alpha=-1.0)
        return grad_anchor * grad, grad_table * grad, None, None


def info_nce(anchor, positive, temperature=0.2, symmetric=False, normalize=True):
    r"""In-batch InfoNCE: row i of ``positive`` is the positive of row i of ``anchor``, the
    other rows are its negatives.

    :math:`\mathcal L = -\frac1B \sum_i \log \frac{\exp(\cos(a_i, p_i)/\tau)}{\sum_j \exp(\cos(a_i, p_j)/\tau)}`

    Args:
        anchor, positive: (B x d) tensors.
        temperature: :math:`\tau`.
        symmetric: average with the loss in the other direction (positive -> anchor).
        normalize: ``False`` scores raw dot products :math:`a_i^\top p_j` in place of the
            cosine (SLMRec's FAC heads, MMRec's ``fac``).

    Returns:
        scalar tensor (first-order differentiable: :class:`_InBatchNCE`).
    """
    if normalize:
        anchor, positive = F.normalize(anchor, dim=1), F.normalize(positive, dim=1)
    bound = 1.0 / temperature if normalize else None
    # 1/τ scales the (B x d) anchors, not the (B x B) logits: the same values, B/d times fewer divisions
    loss = _InBatchNCE.apply(anchor / temperature, positive, bound)
    if symmetric:
        loss = 0.5 * (loss + _InBatchNCE.apply(positive / temperature, anchor, bound))
    return loss


class _GraceNCE(torch.autograd.Function):
    r"""GRACE's per-row losses, summed, of the anchors ``scaled`` (B x d: rows ``rows`` of the
    unit-row ``anchor``, times 1/τ) against every row of the unit-row ``anchor`` and ``positive``
    (n x d), the anchor itself left out of the first view, with its gradient written out:
    :math:`\partial/\partial s_i = \sum_j (q_{ij} a_j + r_{ij} p_j) - p_{y_i}`,
    :math:`\partial/\partial a_j = \sum_i q_{ij} s_i`,
    :math:`\partial/\partial p_j = \sum_i r_{ij} s_i - \sum_{i: y_i = j} s_i`, (q | r) the
    softmax over both views' logits. Every logit lies in [-1/τ, 1/τ] (``bound``): the exps are
    taken in place (:func:`_exp_in_place`: no max shift up to e^50) and kept as the softmax,
    where autograd's logsumexps took a max, a shift, a division by τ and their backward passes
    over each (B x n) block (over half of a MICRO epoch)."""

    @staticmethod
    def forward(ctx, scaled, rows, anchor, positive, bound):
        intra, inter = scaled @ anchor.T, scaled @ positive.T
        local = torch.arange(len(rows), device=rows.device)
        positives = inter[local, rows]
        shift = _exp_in_place([intra, inter], bound)
        intra[local, rows] = 0.0  # the anchor itself is no negative
        total = (intra.sum(dim=1) + inter.sum(dim=1)).unsqueeze(1)
        loss = total.log().squeeze(1) + shift - positives
        ctx.save_for_backward(scaled, rows, anchor, positive, intra.div_(total), inter.div_(total))
        return loss.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        scaled, rows, anchor, positive, intra, inter = ctx.saved_tensors
        grad_scaled = intra @ anchor + inter @ positive - positive[rows]
        grad_positive = (inter.T @ scaled).index_add_(0, rows, scaled, alpha=-1.0)
        return grad_scaled * grad, None, intra.T @ scaled * grad, grad_positive * grad, None


def _grace_rows(anchor_rows, rows, anchor, positive, temperature):
    """GRACE's loss summed over the L2-normalised anchors ``anchor_rows`` (B x d), rows ``rows``
    (B,) of the L2-normalised ``anchor`` (n x d); see :func:`grace_info_nce`."""
    return _GraceNCE.apply(anchor_rows / temperature, rows, anchor, positive, 1.0 / temperature)


def grace_info_nce(anchor, positive, temperature=0.5, chunk_size=4096):
    r"""GRACE's contrastive loss (Zhu et al., 2020), one direction, as MICRO uses it to align
    each modality's item representations with the fused ones.

    Row i of ``positive`` is the positive of row i of ``anchor``; its negatives are every other
    row of **both** views:

    :math:`\ell_i = -\log \frac{e^{\theta(a_i, p_i)/\tau}}{\sum_{j \ne i} e^{\theta(a_i, a_j)/\tau}
    + \sum_j e^{\theta(a_i, p_j)/\tau}}`, :math:`\theta` = cosine, loss = mean over i.

    Anchors are taken ``chunk_size`` rows at a time (the authors' ``batched_contrastive_loss``):
    each chunk holds (chunk x n) logits, and with more than one chunk each is recomputed in the
    backward pass (activation checkpointing) instead of being kept, so memory stays
    O(chunk x n) rather than growing to n x n over the chunks.

    Args:
        anchor, positive: (n x d) tensors.

    Returns:
        scalar tensor.
    """
    anchor, positive = F.normalize(anchor, dim=1), F.normalize(positive, dim=1)
    n_rows = anchor.shape[0]
    rows = torch.arange(n_rows, device=anchor.device)
    if n_rows <= chunk_size:
        return _grace_rows(anchor, rows, anchor, positive, temperature) / n_rows
    total = anchor.new_zeros(())
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        total = total + checkpoint(_grace_rows, anchor[start:stop], rows[start:stop], anchor, positive, temperature,
                                   use_reentrant=False)
    return total / n_rows


def node_rows_l2(table, interaction, user_field, item_fields, n_users):
    r""":math:`\mathrm{mean}(E_u^2) + \mathrm{mean}(E_i^2)` over the batch's users and items of a
    (U + I) x d node table (users first; MMGCN's and GRCN's ID term in MMRec).

    Args:
        table: (U + I) x d tensor.
        interaction: the batch; ``user_field`` and every field of ``item_fields`` are read.
    """
    users = interaction[user_field]
    items = torch.cat([interaction[field] for field in item_fields]) + n_users
    return (table[users] ** 2).mean() + (table[items] ** 2).mean()


class DenoisingBPRLoss(nn.Module):
    r"""BPR with a denoising rule from Wang et al., "Denoising Implicit Feedback for
    Recommendation" (WSDM 2021), adapted from their pointwise loss to the pairwise one:
    per row :math:`\ell = -\log \sigma(s^+ - s^-)`.

    - ``tce`` (truncated loss): drop rate :math:`\epsilon(t) = \min(\epsilon_{max} t / N,
      \epsilon_{max})` at training iteration t (``iteration``, advanced once per batch by the
      trainer); the :math:`\lfloor \epsilon(t) B \rfloor` rows with the largest loss are
      dropped and the rest averaged.
    - ``rce`` (reweighted loss): :math:`\mathrm{mean}(\sigma(s^+ - s^-)^\beta \ell)`, the
      weight detached, so hard (likely noisy) rows count less.

    Same call signature as RecBole's ``BPRLoss``: ``forward(pos_score, neg_score)`` -> scalar.
    """

    MODES = ("tce", "rce")

    def __init__(self, mode, drop_rate=0.2, num_gradual=10000, beta=0.25):
        super().__init__()
        if mode not in self.MODES:
            raise ConfigError(f"denoising BPR mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.drop_rate, self.num_gradual, self.beta = mode, drop_rate, max(1, num_gradual), beta
        self.iteration = 0

    def current_drop_rate(self):
        r""":math:`\epsilon(t) = \min(\epsilon_{max} t / N, \epsilon_{max})` at t = ``iteration``."""
        return min(self.drop_rate * self.iteration / self.num_gradual, self.drop_rate)

    def n_dropped(self, batch_size):
        r""":math:`\lfloor \epsilon(t) B \rfloor` (never the whole batch), robust to float round-off."""
        return min(math.floor(self.current_drop_rate() * batch_size + 1e-9), batch_size - 1)

    def forward(self, pos_score, neg_score):
        """(B,) positive and negative scores (any shape: every entry is a row) -> scalar loss."""
        margin = (pos_score - neg_score).reshape(-1)
        losses = -F.logsigmoid(margin)
        if self.mode == "rce":
            return (torch.sigmoid(margin).detach().pow(self.beta) * losses).mean()
        n_keep = len(losses) - self.n_dropped(len(losses))
        return torch.topk(losses, n_keep, largest=False, sorted=False).values.mean()


def weighted_bpr(pos_scores, neg_scores, pos_weight, neg_weight):
    r""":math:`-\mathrm{mean}[w^+ \log\sigma(s^+ - s^-) + w^- \log\sigma(s^- - s^+)]` (DA-MRS's
    preference-guided BPR: :math:`w^-` pulls a suspected noisy positive below its negative)."""
    margin = pos_scores - neg_scores
    return -(pos_weight * F.logsigmoid(margin) + neg_weight * F.logsigmoid(-margin)).mean()


class PreferenceWeightedBPRLoss(nn.Module):
    r"""DA-MRS's preference-guided BPR as a drop-in for a model's ``BPRLoss`` (``denoise: damrs``,
    :mod:`recbole_mm.trainer.damrs_denoise`): :func:`weighted_bpr` of the model's own scores with
    the batch's per-row weights (w⁺, w⁻), which carry no gradient; with no weights it is plain BPR.

    The trainer gives the batch's weights with :meth:`set_weights`, either as tensors or as a
    zero-argument callable returning them, called at the first BPR call of the batch (so they can
    come from the forward pass the model's ``calculate_loss`` has just made). Every BPR call of
    that batch (FREEDOM makes three: ID, text and image scores) uses the same weights, row i of
    the scores being row i of the batch. Same call signature as RecBole's ``BPRLoss``.
    """

    def __init__(self):
        super().__init__()
        self.pos_weight = self.neg_weight = self.pending = None

    def set_weights(self, pos_weight=None, neg_weight=None):
        """The batch's (B,) weights; ``pos_weight`` a callable -> (w⁺, w⁻) defers them; none: plain BPR."""
        self.pending = pos_weight if callable(pos_weight) else None
        self.pos_weight, self.neg_weight = (None, None) if callable(pos_weight) else (pos_weight, neg_weight)

    def forward(self, pos_score, neg_score):
        pos_score, neg_score = pos_score.reshape(-1), neg_score.reshape(-1)
        if self.pending is not None:
            self.pos_weight, self.neg_weight = self.pending()
            self.pending = None
        if self.pos_weight is None:
            return -F.logsigmoid(pos_score - neg_score).mean()
        if len(self.pos_weight) != len(pos_score) or len(self.neg_weight) != len(neg_score):
            raise ValueError(f"denoise: damrs weighs the batch's rows ({len(self.pos_weight)}), but the model's "
                             f"BPR got {len(pos_score)} positive and {len(neg_score)} negative scores")
        return weighted_bpr(pos_score, neg_score, self.pos_weight.detach(), self.neg_weight.detach())


def install_denoising_loss(model, loss_module):
    """Replace every RecBole ``BPRLoss`` held by ``model`` (or its submodules) with
    ``loss_module``, so the model's own ``calculate_loss`` uses it unchanged.

    Returns:
        the number of replaced attributes; raises ValueError when there is none.
    """
    replaced = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, BPRLoss):
                setattr(module, name, loss_module)
                replaced += 1
    if not replaced:
        raise ConfigError(f"{type(model).__name__} computes its loss without a BPRLoss module; "
                         "denoise: tce / rce / bod / damrs cannot be applied to it")
    return replaced


def chunked_info_nce(anchor, positive, temperature=0.2, chunk_size=4096):
    r""":func:`info_nce` (one direction, every row of ``positive`` a candidate) in bounded memory
    for large n: anchors are taken ``chunk_size`` rows at a time and, with more than one chunk,
    each chunk's (chunk x n) logits are recomputed in the backward pass (activation
    checkpointing) instead of kept, so memory is O(chunk x n) instead of O(n x n). Same value
    and gradients as :func:`info_nce` (up to float rounding); with n <= ``chunk_size`` it is
    :func:`info_nce`. MENTOR's graph-perturbation terms run over all users / all items.

    Args:
        anchor, positive: (n x d) tensors.

    Returns:
        scalar tensor.
    """
    n_rows = anchor.shape[0]
    if n_rows <= chunk_size:
        return info_nce(anchor, positive, temperature)
    rows = torch.arange(n_rows, device=anchor.device)
    total = anchor.new_zeros(())
    for start in range(0, n_rows, chunk_size):  # each chunk: table_info_nce against all rows
        stop = min(start + chunk_size, n_rows)
        total = total + checkpoint(table_info_nce, anchor[start:stop], positive, rows[start:stop], temperature,
                                   use_reentrant=False)
    return total / n_rows


def table_info_nce(anchor, table, targets, temperature=0.2):
    r"""InfoNCE of a batch of anchors against a whole table of candidates: the positive of
    anchor i is ``table[targets[i]]``, and every row of ``table`` (the positive included) is in
    its denominator (LGMRec's triple loss: negatives are all users / all items, not the batch).

    :math:`\mathcal L = -\sum_i \log \frac{\exp(\cos(a_i, t_{y_i})/\tau)}{\sum_j \exp(\cos(a_i, t_j)/\tau)}`
    (summed over the B anchors).

    Args:
        anchor: (B x d) tensor.
        table: (N x d) tensor of candidates.
        targets: int64 (B,) rows of ``table``.
        temperature: :math:`\tau`.

    Returns:
        scalar tensor.
    """
    # unit rows, the anchors scaled by 1/τ: every logit lies in [-1/τ, 1/τ]
    return _TableNCE.apply(F.normalize(anchor, dim=1) / temperature, F.normalize(table, dim=1), targets,
                           1.0 / temperature)


__all__ = ["BPRLoss", "EmbLoss", "info_nce", "node_rows_l2", "grace_info_nce", "DenoisingBPRLoss", "install_denoising_loss",
           "weighted_bpr", "PreferenceWeightedBPRLoss",
           "chunked_info_nce", "table_info_nce"]
