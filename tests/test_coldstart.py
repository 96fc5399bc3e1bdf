"""The item cold-start split: held-out items never reach training, and feature-based models
score them far better than chance while an ID-only model does not."""
import os

import numpy as np
import torch
import pytest

from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
from tests.conftest import REPO_ROOT, train_each

COLDSTART = os.path.join(REPO_ROOT, "properties", "coldstart.yaml")


def test_held_out_items_never_reach_training(run_config):
    config = Config("BPR", "synthetic", [COLDSTART], run_config())
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    items = {name: set(split._dataset.inter_feat["item_id"].numpy()) for name, split in
             (("train", train), ("valid", valid), ("test", test))}
    valid_items, test_items = dataset.cold_items
    assert items["valid"] == set(valid_items) and items["test"] == set(test_items)
    assert not items["train"] & (items["valid"] | items["test"]) and not items["valid"] & items["test"]
    n_items = len(items["train"] | items["valid"] | items["test"])
    assert abs(len(valid_items) - 0.1 * n_items) <= 1 and abs(len(test_items) - 0.1 * n_items) <= 1
    total = sum(split._dataset.inter_num for split in (train, valid, test))
    assert total == dataset.inter_num, "every interaction follows its item"
    held_out = set(valid_items) | set(test_items)
    for _ in range(3):
        for batch in train:
            assert not set(batch["neg_item_id"].numpy()) & held_out, "held-out items are never negatives"


def test_cold_start_split_is_seeded(run_config):
    first = create_dataset(Config("BPR", "synthetic", [COLDSTART], run_config()))
    first.build()
    again = create_dataset(Config("BPR", "synthetic", [COLDSTART], run_config()))
    again.build()
    other = create_dataset(Config("BPR", "synthetic", [COLDSTART], run_config(seed=1)))
    other.build()
    assert np.array_equal(first.cold_items[1], again.cold_items[1])
    assert not np.array_equal(first.cold_items[1], other.cold_items[1])


@pytest.fixture(scope="module")
def cold_runs(tmp_path_factory):
    return train_each(tmp_path_factory.mktemp("cold"), ("LIRDRec", "FREEDOM", "BPR"), "synthetic", [COLDSTART], epochs=20)


@pytest.mark.parametrize("model", ["LIRDRec", "FREEDOM"])
def test_feature_models_rank_unseen_items_far_above_chance(cold_runs, model):
    assert cold_runs[model]["test_result"]["gauc"] > 0.65, cold_runs[model]["test_result"]
    assert cold_runs[model]["test_result"]["gauc"] > cold_runs["BPR"]["test_result"]["gauc"] + 0.1


def test_id_only_model_is_not_better_than_chance(cold_runs):
    assert cold_runs["BPR"]["test_result"]["gauc"] < 0.55, cold_runs["BPR"]["test_result"]


def test_evaluation_ranks_only_the_splits_held_out_items(run_config):
    from recbole_mm.model.vbpr import VBPR
    from recbole_mm.trainer import MultiModalTrainer

    config = Config("VBPR", "synthetic", [COLDSTART], run_config())
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    trainer = MultiModalTrainer(config, VBPR(config, train._dataset))
    trainer.evaluate(test, load_best_model=False)
    kept = np.nonzero(~trainer._excluded_items.numpy())[0]
    assert np.array_equal(kept, dataset.cold_items[1])
    interaction, scores, _, _ = trainer._full_sort_batch_eval(next(iter(test)))
    assert torch.isinf(scores[:, trainer._excluded_items]).all()
    trainer.evaluate(valid, load_best_model=False)
    assert np.array_equal(np.nonzero(~trainer._excluded_items.numpy())[0], dataset.cold_items[0])
