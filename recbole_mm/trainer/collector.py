"""``MultiModalCollector``: RecBole's evaluation ``Collector`` with two of its full-sort resources
computed without dense (users x items) work beyond the scores themselves.

``rec.topk`` (Recall, NDCG, Precision, MAP, ...): RecBole builds a dense (B x I) 0/1 matrix of
the positives per batch, sums it for the positive counts and gathers it at the top-k; on the
Sports graph (18k items) those two dense passes took 6.5 of a 14.5 s evaluation, twice the
scores' own matmul. :func:`topk_rows` looks the top-k items up among the batch's sorted
positive keys instead: O(B · k · log P).

``rec.meanrank`` (GAUC): RecBole computes GAUC's ``rec.meanrank`` by sorting every user's full score row
(O(U · I log I) per evaluation), which dominates full-sort evaluation on large catalogues on
the CPU. The same numbers follow from counting, for each positive item p of a user, the items
scored strictly higher (g) and at least as high (ge): its tie-averaged rank is
(g + 1 + ge) / 2. That costs O(P · I) for P positives, with P ≪ U · log I in practice.
"""
import torch
from recbole.evaluator import Collector

_CHUNK_ELEMENTS = 2 ** 24
MEAN_RANK = "rec.meanrank"
TOPK = "rec.topk"


def topk_rows(topk_idx, positive_u, positive_i, n_items):
    """RecBole's ``rec.topk`` rows for a batch, without a dense positive matrix.

    Args:
        topk_idx: (B x K) item index of each row's top-K scores.
        positive_u, positive_i: (P,) row and item index of each positive (repeats count once).
        n_items: width of the score rows.

    Returns:
        (B x (K + 1)) int64 tensor: 1 where the ranked item is a positive of the row, then the
        row's number of positives (RecBole's ``pos_idx`` and ``pos_len_list``, concatenated).
    """
    n_rows = topk_idx.shape[0]
    keys = torch.unique(positive_u.long() * n_items + positive_i.long())  # sorted, distinct
    ranked = torch.arange(n_rows, device=topk_idx.device)[:, None] * n_items + topk_idx
    hit = torch.zeros(ranked.shape, dtype=torch.bool, device=topk_idx.device)
    if len(keys):
        found = torch.searchsorted(keys, ranked).clamp_(max=len(keys) - 1)
        hit = keys[found] == ranked
    pos_len = torch.bincount(torch.div(keys, n_items, rounding_mode="floor"), minlength=n_rows)
    return torch.cat([hit.long(), pos_len[:, None]], dim=1)


def mean_rank_rows(scores, positive_u, positive_i):
    """RecBole's ``rec.meanrank`` rows for a batch, without sorting.

    Args:
        scores: (B x I) scores, masked items at -inf.
        positive_u, positive_i: (P,) row and item index of each positive.

    Returns:
        (B x 3) float tensor: [sum of the positives' tie-averaged descending ranks,
        number of items scored above the row minimum (RecBole's ``user_len``), number of positives].
    """
    n_rows = scores.shape[0]
    pos_scores = scores[positive_u, positive_i]
    avg_rank = torch.empty_like(pos_scores)
    step = max(1, _CHUNK_ELEMENTS // max(scores.shape[1], 1))
    for start in range(0, len(positive_u), step):
        rows = scores[positive_u[start:start + step]]
        pivot = pos_scores[start:start + step, None]
        greater = (rows > pivot).sum(dim=1)
        greater_equal = (rows >= pivot).sum(dim=1)
        avg_rank[start:start + step] = 0.5 * (greater + 1 + greater_equal).to(scores.dtype)
    rank_sum = torch.zeros(n_rows, dtype=scores.dtype, device=scores.device).index_add_(0, positive_u, avg_rank)
    user_len = (scores > scores.min(dim=1, keepdim=True).values).sum(dim=1).to(scores.dtype)
    pos_len = torch.bincount(positive_u, minlength=n_rows).to(scores.dtype)
    return torch.stack([rank_sum, user_len, pos_len], dim=1)


class MultiModalCollector(Collector):
    """Collects the same evaluation resources as RecBole's ``Collector``; ``rec.topk`` comes
    from :func:`topk_rows` and ``rec.meanrank`` (GAUC) from :func:`mean_rank_rows` instead of
    dense positive matrices and a full sort."""

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        wanted = {name: self.register.need(name) for name in (TOPK, MEAN_RANK)}
        for name in wanted:
            setattr(self.register, name, False)
        try:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        finally:
            for name, need in wanted.items():
                setattr(self.register, name, need)
        if wanted[TOPK]:
            _, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
            self.data_struct.update_tensor(TOPK, topk_rows(topk_idx, positive_u, positive_i, scores_tensor.shape[1]))
        if wanted[MEAN_RANK]:
            self.data_struct.update_tensor(MEAN_RANK, mean_rank_rows(scores_tensor, positive_u, positive_i))
