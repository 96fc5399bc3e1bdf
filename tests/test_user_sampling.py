"""``train_sampling: user``: batches of distinct users (the LATTICE / MICRO authors' sampler)."""
import numpy as np
import pytest
import torch

from recbole_mm.data.dataloader import UserSampledTrainDataLoader
from recbole_mm.errors import ConfigError
from recbole_mm.model import VBPR
from tests.conftest import build_model, train_each


def loaders(run_config, **overrides):
    config, dataset, (train, valid, test), model = build_model(run_config(**overrides), VBPR)
    return config, train, model


def user_counts(train, model):
    feat = train._dataset.inter_feat
    return np.bincount(feat[model.USER_ID].numpy(), minlength=train._dataset.user_num)


def test_batches_hold_distinct_users_with_their_own_items_and_negatives(run_config):
    config, train, model = loaders(run_config, train_sampling="user", train_batch_size=64)
    assert isinstance(train, UserSampledTrainDataLoader)
    feat = train._dataset.inter_feat
    history = set(zip(feat[model.USER_ID].tolist(), feat[model.ITEM_ID].tolist()))
    batches = list(train)
    assert len(batches) == len(train) == len(feat) // 64 + 1
    for batch in batches:
        users = batch[model.USER_ID].tolist()
        assert len(users) == 64 and len(set(users)) == 64, "distinct users, one row each"
        assert all(pair in history for pair in zip(users, batch[model.ITEM_ID].tolist()))
        assert not any(pair in history for pair in zip(users, batch[model.NEG_ITEM_ID].tolist()))
    drawn = {pair for _ in range(5) for batch in train
             for pair in zip(batch[model.USER_ID].tolist(), batch[model.ITEM_ID].tolist())}
    assert len(drawn) > 0.6 * len(history), "each user's positive is drawn among all its train items"


def test_users_are_drawn_uniformly_not_by_history_length(run_config):
    """RecBole's loader sees a user as often as it has interactions; the user sampler sees every
    user about equally often."""
    _, by_user, model = loaders(run_config, train_sampling="user", train_batch_size=32)
    _, by_row, _ = loaders(run_config, train_batch_size=32)
    counts = user_counts(by_row, model)
    heavy, light = counts >= np.quantile(counts[counts > 0], 0.8), (counts > 0) & (counts <= np.quantile(counts[counts > 0], 0.2))

    def seen(loader, epochs):
        total = np.zeros_like(counts)
        for _ in range(epochs):
            for batch in loader:
                total += np.bincount(batch[model.USER_ID].numpy(), minlength=len(counts))
        return total

    users, rows = seen(by_user, 6), seen(by_row, 6)
    ratio = counts[heavy].mean() / counts[light].mean()
    assert ratio > 1.5
    assert rows[heavy].mean() / rows[light].mean() == pytest.approx(ratio)
    assert users[heavy].mean() / users[light].mean() == pytest.approx(1.0, abs=0.15)


def test_the_draws_follow_the_seed(run_config):
    def users(**overrides):
        _, train, model = loaders(run_config, train_sampling="user", **overrides)
        return [batch[model.USER_ID].tolist() for batch in train]

    first, again, other = users(), users(), users(seed=8)
    assert first == again and first != other


def test_ranks_take_disjoint_shares_of_the_same_draw(run_config):
    config, train, model = loaders(run_config, train_sampling="user", train_batch_size=64)
    whole = [train.batch_rows() for _ in range(3)]
    shares = []
    for rank in range(2):
        train.generator.manual_seed(config["seed"])
        train._rank, train._world = rank, 2
        shares.append([train.batch_rows() for _ in range(3)])
    for batch, first, second in zip(whole, *shares):
        assert not set(first.tolist()) & set(second.tolist())
        assert sorted(first.tolist() + second.tolist()) == sorted(batch.tolist())


def test_unknown_sampling_is_a_config_error(run_config):
    with pytest.raises(ConfigError, match="train_sampling must be one of"):
        loaders(run_config, train_sampling="items")


def test_any_model_trains_with_it(tmp_path):
    runs = train_each(tmp_path, ["VBPR", "LightGCN"], "synthetic", epochs=2, train_sampling="user",
                      synthetic_generator={"seed": 7, "n_users": 300, "n_items": 200, "mean_interactions": 12})
    for run in runs.values():
        assert run["best_valid_result"]["recall@20"] > 0
