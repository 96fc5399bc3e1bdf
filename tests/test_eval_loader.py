"""The full-sort evaluation loader and the sampler's used pairs without a Python object per user
give RecBole's batches and sets."""
import numpy as np
import pytest
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.sampler import Sampler

from recbole_mm.data import mask_train_history_only
from recbole_mm.data.dataloader import VectorisedFullSortEvalDataLoader
from recbole_mm.data.sampler import MultiModalSampler, UsedPairs
from recbole_mm.errors import DataError
from recbole_mm.model import VBPR
from tests.conftest import build_model


def _pair_codes(users, items, width):
    return torch.sort(users.to(torch.int64) * width + items.to(torch.int64)).values


@pytest.mark.parametrize("protocol", ["recbole", "mmrec"])
def test_vectorised_loader_gives_recboles_batches(run_config, protocol):
    """Every batch of the valid and test loaders (small batches: many of them, users without a
    history in the first split included), under both protocols (MMRec's masks the train items
    only), holds the (user, item) entries of RecBole's own loader, built from RecBole's sampler
    on the same splits; only the order of a user's items may differ (RecBole: a set's)."""
    config, _, (train, valid, test), _ = build_model(run_config(eval_protocol=protocol, eval_batch_size=1500 * 7), VBPR)
    splits = [train._dataset, valid._dataset, test._dataset]
    base = Sampler(["train", "valid", "test"], splits)
    train_users, train_items = (splits[0].inter_feat[field].numpy() for field in (splits[0].uid_field, splits[0].iid_field))
    for phase, loader in (("valid", valid), ("test", test)):
        theirs_loader = FullSortEvalDataLoader(config, loader._dataset, base.set_phase(phase), shuffle=False)
        if protocol == "mmrec" and phase == "test":
            mask_train_history_only(theirs_loader, train_users, train_items, splits[0].user_num)
        assert isinstance(loader, VectorisedFullSortEvalDataLoader) and loader.step > 1
        assert loader._per_user is None, "no per-user tensors unless asked for"
        assert torch.equal(loader.uid_list, theirs_loader.uid_list)
        assert (loader.uid2items_num == theirs_loader.uid2items_num).all()
        assert loader.sample_size == theirs_loader.sample_size and loader.step == theirs_loader.step
        width, batches = loader._dataset.item_num, 0
        for start in range(0, loader.sample_size, loader.step):
            index = list(range(start, min(start + loader.step, loader.sample_size)))
            ours = loader.collate_fn(index)
            theirs = FullSortEvalDataLoader.collate_fn(theirs_loader, index)
            assert torch.equal(ours[0][loader.uid_field], theirs[0][loader.uid_field])
            assert torch.equal(_pair_codes(*ours[1], width), _pair_codes(*theirs[1], width))
            assert torch.equal(_pair_codes(ours[2], ours[3], width), _pair_codes(theirs[2], theirs[3], width))
            assert all(t.dtype == torch.int64 for t in (*ours[1], ours[2], ours[3]))
            batches += 1
        assert batches >= 5
        # RecBole's per-user tables, when read, hold the same items
        user = int(loader.uid_list[3])
        for name in ("uid2history_item", "uid2positive_item"):
            assert sorted(getattr(loader, name)[user].tolist()) == sorted(getattr(theirs_loader, name)[user].tolist())


def test_used_pairs_read_as_recboles_used_ids(run_config):
    _, _, (train, valid, test), _ = build_model(run_config(), VBPR)
    splits = [train._dataset, valid._dataset, test._dataset]
    ours = MultiModalSampler(["train", "valid", "test"], splits).used_ids
    theirs = Sampler(["train", "valid", "test"], splits).used_ids
    for phase in ("train", "valid", "test"):
        assert isinstance(ours[phase], UsedPairs) and len(ours[phase]) == len(theirs[phase])
        assert all(a == b for a, b in zip(ours[phase], theirs[phase]))
        users = np.array([1, 5, 2])
        assert list(ours[phase][users]) == list(theirs[phase][users])


def test_a_user_with_every_item_is_a_clear_error():
    users, items = np.zeros(4, dtype=np.int64) + 1, np.arange(1, 5)
    split = type("Split", (), {"uid_field": "u", "iid_field": "i", "user_num": 2, "item_num": 5,
                               "inter_feat": {"u": torch.from_numpy(users), "i": torch.from_numpy(items)}})()
    with pytest.raises(DataError, match="every item"):
        MultiModalSampler(["train"], [split])


def test_tables_are_rebuilt_after_the_histories_change(run_config):
    _, _, (_, _, test), _ = build_model(run_config(), VBPR)
    first = test.collate_fn([0, 1, 2])[1][1]
    user = int(test.user_df[test.uid_field][0])
    test.uid2history_item[user] = torch.tensor([7, 3], dtype=torch.int64)
    test.forget_tables()
    history_u, history_i = test.collate_fn([0, 1, 2])[1]
    assert history_i[history_u == 0].tolist() == [7, 3] and not torch.equal(history_i, first)
