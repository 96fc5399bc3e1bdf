"""``eval_protocol: recbole | mmrec``: which items the test ranking masks, where the training
negatives come from, and the error for a bad value."""
import numpy as np
import pytest
import torch
from recbole.model.general_recommender import BPR

from recbole_mm.data.mmrec_format import write_mmrec_inter
from recbole_mm.model.vbpr import VBPR
from tests.conftest import build_model

N_USERS, N_ITEMS, TRAIN_ITEMS = 60, 40, 30


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    """An MMRec folder where items 30..39 occur only in valid/test, and every user has train,
    valid and test items (so the two protocols differ on every test user)."""
    root = tmp_path_factory.mktemp("protocol")
    folder = root / "split"
    folder.mkdir()
    rng = np.random.default_rng(0)
    users, items, labels = [], [], []
    for user in range(N_USERS):
        train = rng.choice(TRAIN_ITEMS, size=6, replace=False)
        held = rng.choice(np.setdiff1d(np.arange(N_ITEMS), train), size=4, replace=False)
        users += [user] * 10
        items += list(train) + list(held)
        labels += [0] * 6 + [1, 1, 2, 2]
    write_mmrec_inter(str(folder / "split.inter"), np.array(users), np.array(items), np.array(labels))
    np.save(folder / "image_feat.npy", rng.normal(size=(N_ITEMS, 8)).astype(np.float32))
    return str(root)


def prepare(split_root, tmp_path, **overrides):
    config_dict = {"data_path": split_root, "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING",
                   "modality_files": {"image": "image_feat.npy"}, **overrides}
    config, dataset, (train, valid, test), _ = build_model(config_dict, BPR, "split")
    return dataset, train, valid, test


def token_sets(dataset, rows):
    """{user token: set of item tokens} of the (users, items) internal-id pairs."""
    users, items = rows
    user_tokens = dataset.id2token(dataset.uid_field, users)
    item_tokens = dataset.id2token(dataset.iid_field, items)
    result = {}
    for user, item in zip(user_tokens, item_tokens):
        result.setdefault(user, set()).add(item)
    return result


def split_sets(dataset, loader):
    feat = loader._dataset.inter_feat
    return token_sets(dataset, (feat[dataset.uid_field].numpy(), feat[dataset.iid_field].numpy()))


def masked_sets(dataset, loader):
    """{user token: items the full-sort loader masks} over all its batches."""
    users, items = [], []
    for user_df, (history_u, history_i), _, _ in loader:
        users.append(user_df[dataset.uid_field][history_u].numpy())
        items.append(history_i.numpy())
    return token_sets(dataset, (np.concatenate(users), np.concatenate(items)))


@pytest.mark.parametrize("protocol", ["mmrec", "recbole"])
def test_test_split_masks(split_root, tmp_path, protocol):
    dataset, train, valid, test = prepare(split_root, tmp_path, eval_protocol=protocol)
    train_sets, valid_sets = split_sets(dataset, train), split_sets(dataset, valid)
    masked = masked_sets(dataset, test)
    expected = {user: items | (valid_sets.get(user, set()) if protocol == "recbole" else set())
                for user, items in train_sets.items()}
    assert masked == {user: expected[user] for user in masked}
    if protocol == "mmrec":  # a valid item of the user stays rankable on test
        assert any(masked[user].isdisjoint(valid_sets[user]) and valid_sets[user] for user in masked)
    assert masked_sets(dataset, valid) == {user: train_sets[user] for user in masked_sets(dataset, valid)}


def draw_negatives(train, rounds=30):
    users, negatives = [], []
    for _ in range(rounds):
        for batch in train:
            users.append(batch[train._dataset.uid_field].numpy())
            negatives.append(batch[train.neg_item_id].numpy())
    return np.concatenate(users), np.concatenate(negatives)


@pytest.mark.parametrize("protocol", ["mmrec", "recbole"])
def test_training_negatives(split_root, tmp_path, protocol):
    dataset, train, _, _ = prepare(split_root, tmp_path, eval_protocol=protocol, train_batch_size=64)
    feat = train._dataset.inter_feat
    train_items = set(feat[dataset.iid_field].numpy().tolist())
    users, negatives = draw_negatives(train)
    history = set(zip(feat[dataset.uid_field].numpy().tolist(), feat[dataset.iid_field].numpy().tolist()))
    assert not any((u, i) in history for u, i in zip(users.tolist(), negatives.tolist()))
    outside = set(negatives.tolist()) - train_items
    if protocol == "mmrec":
        assert not outside
    else:  # RecBole draws among all items: the valid/test-only ones too
        assert outside and 0 not in outside


def test_bad_protocol(split_root, tmp_path):
    with pytest.raises(ValueError, match="eval_protocol"):
        prepare(split_root, tmp_path, eval_protocol="mmrec2")


def test_mmrec_protocol_trains(run_config):
    """A model evaluates under mmrec end to end (test masks differ from valid's structure)."""
    from recbole_mm.model.vbpr import VBPR
    from recbole_mm.trainer.trainer import MultiModalTrainer

    config, _, (train, valid, test), model = build_model(run_config(eval_protocol="mmrec", epochs=1), VBPR)
    trainer = MultiModalTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    result = trainer.evaluate(test, load_best_model=False)
    assert 0.0 <= result["recall@20"] <= 1.0 and torch.isfinite(torch.tensor(result["ndcg@20"]))


def test_vectorised_negative_check_draws_recboles_negatives(run_config):
    """The train sampler's membership test is vectorised; the negatives are RecBole's own."""
    import numpy as np
    from recbole.sampler.sampler import AbstractSampler

    from recbole_mm.data.sampler import MultiModalSampler

    _, _, (train, _, _), _ = build_model(run_config(), VBPR)
    sampler = train._sampler
    assert isinstance(sampler, MultiModalSampler) and sampler.used_codes is not None, "vectorised check"
    users = np.random.default_rng(0).integers(1, sampler.user_num, 600)
    for num in (1, 3):
        np.random.seed(11)
        ours = sampler.sample_by_key_ids(users, num)
        np.random.seed(11)
        theirs = AbstractSampler.sample_by_key_ids(sampler, users, num)
        assert torch.equal(ours, theirs)
        keys = np.tile(users, num)
        assert not any(int(v) in sampler.used_ids[u] for u, v in zip(keys, ours.tolist()))
    np.random.seed(3)
    single = sampler.sample_by_key_ids(np.full(50, users[0]), 2)
    assert not set(single.tolist()) & sampler.used_ids[users[0]]
