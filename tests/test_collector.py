"""The sort-free GAUC resource equals RecBole's sorted one, ties and masked items included."""
import torch
from recbole.evaluator import Collector

from recbole_mm.config import Config
from recbole_mm.trainer.collector import MultiModalCollector, mean_rank_rows


def test_mean_rank_rows_equal_recboles_sorted_ranks(run_config):
    config = Config("BPR", "synthetic", config_dict=run_config(metrics=["GAUC", "Recall"], topk=[5],
                                                                valid_metric="Recall@5"))
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40, 30), generator=generator).float()   # many ties
    scores[torch.rand(40, 30, generator=generator) < 0.2] = -torch.inf    # masked history items
    positive = (torch.rand(40, 30, generator=generator) < 0.15) & torch.isfinite(scores)
    positive[0] = False
    positive[0, 3] = torch.isfinite(scores[0, 3])
    positive_u, positive_i = positive.nonzero(as_tuple=True)

    ours, theirs = MultiModalCollector(config), Collector(config)
    for collector in (ours, theirs):
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
    expected = theirs.data_struct.get("rec.meanrank")
    got = ours.data_struct.get("rec.meanrank")
    assert torch.equal(got, expected.to(got.dtype))
    assert torch.equal(ours.data_struct.get("rec.topk"), theirs.data_struct.get("rec.topk"))
    assert ours.register.need("rec.meanrank"), "the register is left as it was"


def test_mean_rank_in_chunks(monkeypatch):
    import recbole_mm.trainer.collector as module

    scores = torch.randn(10, 50)
    positive_u = torch.arange(10).repeat_interleave(3)
    positive_i = torch.randint(0, 50, (30,))
    whole = mean_rank_rows(scores, positive_u, positive_i)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 50 * 4)
    assert torch.equal(mean_rank_rows(scores, positive_u, positive_i), whole)


def test_topk_rows_equal_recboles_dense_positive_matrix(run_config):
    """Recall/NDCG/... read ``rec.topk``: ours (sorted positive keys) must equal RecBole's dense
    0/1 matrix, for rows without positives and for positives outside every top-k."""
    config = Config("BPR", "synthetic", config_dict=run_config(metrics=["Recall", "NDCG", "MAP"], topk=[3, 7],
                                                                valid_metric="Recall@3"))
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(25, 40, generator=generator)
    positive = torch.rand(25, 40, generator=generator) < 0.2
    positive[[2, 9]] = False  # rows with no positive at all
    positive_u, positive_i = positive.nonzero(as_tuple=True)
    order = torch.randperm(len(positive_u), generator=generator)  # the order must not matter
    ours, theirs = MultiModalCollector(config), Collector(config)
    ours.eval_batch_collect(scores, None, positive_u[order], positive_i[order])
    theirs.eval_batch_collect(scores, None, positive_u, positive_i)
    got, expected = ours.data_struct.get("rec.topk"), theirs.data_struct.get("rec.topk")
    assert tuple(got.shape) == (25, 8) and got.dtype == expected.dtype
    assert torch.equal(got, expected)
    assert got[:, :-1].sum() > 0 and torch.equal(got[:, -1], positive.sum(dim=1))
    assert ours.register.need("rec.topk"), "the register is left as it was"
