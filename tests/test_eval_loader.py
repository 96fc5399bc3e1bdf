"""The full-sort evaluation loader's vectorised collate gives RecBole's batches exactly."""
import pytest
import torch
from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_mm.data.dataloader import VectorisedFullSortEvalDataLoader
from recbole_mm.model import VBPR
from tests.conftest import build_model


@pytest.mark.parametrize("protocol", ["recbole", "mmrec"])
def test_vectorised_collate_equals_recboles_per_user_collate(run_config, protocol):
    """Every batch of the valid and test loaders (small batches: many of them, users without a
    history in the first split included), under both protocols (MMRec's rewrites the test
    loader's histories after construction)."""
    _, _, (_, valid, test), _ = build_model(run_config(eval_protocol=protocol, eval_batch_size=1500 * 7), VBPR)
    for loader in (valid, test):
        assert isinstance(loader, VectorisedFullSortEvalDataLoader) and loader.step > 1
        batches = 0
        for start in range(0, loader.sample_size, loader.step):
            index = list(range(start, min(start + loader.step, loader.sample_size)))
            ours = loader.collate_fn(index)
            theirs = FullSortEvalDataLoader.collate_fn(loader, index)
            assert torch.equal(ours[0][loader.uid_field], theirs[0][loader.uid_field])
            for got, expected in zip((*ours[1], ours[2], ours[3]), (*theirs[1], theirs[2], theirs[3])):
                assert got.dtype == expected.dtype and torch.equal(got, expected)
            batches += 1
        assert batches >= 5


def test_tables_are_rebuilt_after_the_histories_change(run_config):
    _, _, (_, _, test), _ = build_model(run_config(), VBPR)
    first = test.collate_fn([0, 1, 2])[1][1]
    user = int(test.user_df[test.uid_field][0])
    test.uid2history_item[user] = torch.tensor([7, 3], dtype=torch.int64)
    test.forget_tables()
    history_u, history_i = test.collate_fn([0, 1, 2])[1]
    assert history_i[history_u == 0].tolist() == [7, 3] and not torch.equal(history_i, first)
