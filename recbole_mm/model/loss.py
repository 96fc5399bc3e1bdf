"""Losses shared by the plugin's models.

``BPRLoss`` (−mean log(1e-10 + σ(s⁺ − s⁻))) and ``EmbLoss`` (Σ‖E‖₂ over the given tensors,
not squared, divided by the rows of the last one) are RecBole's and equal MMRec's helpers of
the same names, so they are re-exported rather than rewritten.
"""
import torch
import torch.nn.functional as F
from recbole.model.loss import BPRLoss, EmbLoss


def info_nce(anchor, positive, temperature=0.2, symmetric=False):
    r"""In-batch InfoNCE: row i of ``positive`` is the positive of row i of ``anchor``, the
    other rows are its negatives.

    :math:`\mathcal L = -\frac1B \sum_i \log \frac{\exp(\cos(a_i, p_i)/\tau)}{\sum_j \exp(\cos(a_i, p_j)/\tau)}`

    Args:
        anchor, positive: (B x d) tensors.
        temperature: :math:`\tau`.
        symmetric: average with the loss in the other direction (positive -> anchor).

    Returns:
        scalar tensor.
    """
    logits = F.normalize(anchor, dim=1) @ F.normalize(positive, dim=1).T / temperature
    targets = torch.arange(anchor.shape[0], device=anchor.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, targets))
    return loss


__all__ = ["BPRLoss", "EmbLoss", "info_nce"]
