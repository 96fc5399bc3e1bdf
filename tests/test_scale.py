"""Scale path (issue 15): the synthetic generator's bounded-memory blocks, FREEDOM's
``trainable_features`` switch (the memory lever on a large catalogue), the kNN cache shared by
FREEDOM, DRAGON and LIRDRec, and ``benchmarks/scale.py`` at a tiny size."""
import os
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from recbole_mm.data.synthetic import ensure_synthetic_dataset, modality_features, sample_interactions
from recbole_mm.model.bm3 import BM3
from recbole_mm.model.dragon import DRAGON
from recbole_mm.model.freedom import FREEDOM
from recbole_mm.model.lattice import LATTICE
from recbole_mm.model.lirdrec import LIRDRec
from recbole_mm.model.mgcn import MGCN
from tests.conftest import REPO_ROOT, build_model, train_steps

# the scale benchmark's arguments at a small size: same keys, same code path
SMALL_SCALE = {"seed": 5, "n_users": 150, "n_items": 600, "mean_interactions": 10, "min_interactions": 5,
               "modalities": {"text": {"dim": 12}, "image": {"dim": 40}, "clip": None}}


def test_generator_at_small_size_gives_the_requested_shapes_and_dtypes(tmp_path):
    folder = str(tmp_path / "scale")
    assert ensure_synthetic_dataset(folder, "scale", SMALL_SCALE)
    assert sorted(name for name in os.listdir(folder) if name.endswith(".npy")) == ["image_feat.npy", "text_feat.npy"]
    for name, dim in (("text", 12), ("image", 40)):
        matrix = np.load(os.path.join(folder, f"{name}_feat.npy"))
        assert matrix.shape == (600, dim) and matrix.dtype == np.float32 and np.isfinite(matrix).all()
    inter = pd.read_csv(os.path.join(folder, "scale.inter"), sep="\t")
    assert list(inter.columns) == ["userID", "itemID", "x_label"]
    assert inter["userID"].between(0, 149).all() and inter["itemID"].between(0, 599).all()
    per_user = inter.groupby("userID").size()
    assert len(per_user) == 150 and per_user.min() >= 5
    assert 8 * 150 < len(inter) < 12 * 150  # mean_interactions 10


def test_block_size_does_not_change_the_draws():
    def draw(budget):
        rng = np.random.default_rng(0)
        users, items = rng.standard_normal((50, 4)), rng.standard_normal((300, 4))
        counts = 3 + rng.poisson(4, 50)
        chosen = sample_interactions(rng, users, items, rng.standard_normal(300), counts, 3.0, 1.0,
                                     budget_elements=budget)
        spec = {"dim": 24, "signal": 1.0, "nuisance": 0.5, "noise": 0.5, "nuisance_dim": 3}
        return chosen + modality_features(rng, items, spec, budget_elements=budget)

    one_row, whole = draw(30), draw(2 ** 23)  # 1 user / 1 item per block vs everything at once
    for left, right in zip(one_row, whole):
        assert np.array_equal(left, right)


def test_generator_memory_stays_within_its_block_budget():
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 20000
    users, items = rng.standard_normal((n_users, 4)), rng.standard_normal((n_items, 4))
    counts, popularity = np.full(n_users, 8), rng.standard_normal(n_items)
    spec = {"dim": 1024, "signal": 1.0, "nuisance": 0.5, "noise": 0.5, "nuisance_dim": 4}
    out = np.empty((n_items, 1024), dtype=np.float32)  # the caller's (memory-mapped) file
    tracemalloc.start()
    try:
        sample_interactions(rng, users, items, popularity, counts, 3.0, 1.0, budget_elements=2 ** 14)
        _, interaction_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        modality_features(rng, items, spec, out=out, budget_elements=2 ** 14)
        _, feature_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # dense float64 would be 32 MB (users x items) and 164 MB (items x dim)
    assert interaction_peak < 4 * 2 ** 20
    assert feature_peak < 4 * 2 ** 20


def test_freedom_frozen_features_stay_fixed_and_leave_the_rest_trainable(run_config):
    _, _, loaders, trainable = build_model(run_config(), FREEDOM)
    _, _, _, frozen = build_model(run_config(trainable_features=False), FREEDOM)
    names = lambda model: {n for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    assert names(trainable) - names(frozen) == {"image_features", "text_features"}
    assert names(frozen) < names(trainable)
    batch = next(iter(loaders[0]))
    for model, moves in ((trainable, True), (frozen, False)):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_steps(model, batch, 3, before_step=model.pre_epoch_processing)
        after = dict(model.named_parameters())
        for name in ("image_features", "text_features"):
            assert (not torch.equal(before[name], after[name])) == moves
        assert not torch.equal(before["image_projection.weight"], after["image_projection.weight"])
        assert not torch.equal(before["item_id_embedding"], after["item_id_embedding"])


FEATURE_TABLES = {"FREEDOM": ("image_features", "text_features"), "BM3": "features.", "MGCN": "features.",
                  "LATTICE": "raw_features."}


@pytest.mark.parametrize("model_class", [FREEDOM, BM3, MGCN, LATTICE])
def test_frozen_feature_tables_are_the_datasets_tensors_and_trainable_ones_copies(run_config, model_class):
    """``trainable_features: False`` keeps no second copy of the catalogue's feature tables;
    ``True`` fine-tunes a copy and leaves the dataset's features as loaded."""
    for trainable in (True, False):
        _, _, _, model = build_model(run_config(trainable_features=trainable), model_class)
        prefix = FEATURE_TABLES[model_class.__name__]
        tables = {name: p for name, p in model.named_parameters() if name.startswith(prefix)}
        assert len(tables) == len(model.modality_features), model_class.__name__
        sources = {m.data_ptr() for m in model.modality_features.values()}
        shares = {name: p.data_ptr() in sources for name, p in tables.items()}
        assert all(shares.values()) == (not trainable) and any(shares.values()) == (not trainable), shares


def test_freedom_dragon_lirdrec_defaults_share_one_knn_cache_file(run_config, tmp_path):
    cache = tmp_path / "knn"
    for model_class in (FREEDOM, DRAGON, LIRDRec):
        build_model(run_config(cache_dir=str(cache)), model_class)
    assert len([name for name in os.listdir(cache) if name.startswith("knn_")]) == 1


@pytest.fixture
def scale_module(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["scale.py"])
    import scale

    return scale


def test_scale_benchmark_measures_a_truncated_epoch_and_restores_the_knn(scale_module, tmp_path):
    import recbole_mm.data.graphs as graphs
    import recbole_mm.model.abstract_recommender as base

    real = graphs.knn_neighbours, base.item_knn_graph
    figures = scale_module.run("FREEDOM", str(tmp_path), max_batches=1, eval_users=10, knn_chunks=1,
                               overrides={"state": "WARNING"},
                               generator=SMALL_SCALE, dataset_name="scale")
    assert (graphs.knn_neighbours, base.item_knn_graph) == real
    assert figures["n_items"] <= 600 and figures["train_batches"] == 1
    assert figures["epoch_extrapolated"] == (figures["epoch_batches"] > 1)
    assert [t["dim"] for t in figures["knn_measured"]] == [40, 12]
    assert figures["peak_rss_gb"] >= figures["rss_after_data_gb"] > 0
    assert figures["pre_epoch_seconds"] > 0  # FREEDOM prunes its graph before the epoch
    assert not os.path.isdir(tmp_path / "knn_cache")  # a stand-in graph is never cached
    whole = scale_module.run("VBPR", str(tmp_path), max_batches=1, eval_users=10, overrides={"state": "WARNING"},
                             generator=SMALL_SCALE, dataset_name="scale", whole_catalogue=True)
    assert figures["n_items"] < whole["n_items"] == 600  # items without interactions indexed too
    row = scale_module.table([figures]).splitlines()[-1]
    assert row.startswith("| FREEDOM |") and "~" in row  # extrapolated kNN marked


def test_scale_benchmark_stands_in_for_itemknncbf_similarity_too(scale_module, tmp_path):
    """ItemKNNCBF imports ``knn_neighbours`` by name: the stand-in must reach it (the 100k run
    would otherwise build the real graph for 20 minutes) and give it the real shrunk cosine on
    the measured rows, and the binding must come back afterwards."""
    import recbole_mm.model.itemknncbf as itemknncbf
    from recbole_mm.data.graphs import knn_neighbours

    real = itemknncbf.knn_neighbours
    figures = scale_module.run("ItemKNNCBF", str(tmp_path), eval_users=10, knn_chunks=1,
                               overrides={"state": "WARNING", "shrink": 10.0},
                               generator=SMALL_SCALE, dataset_name="scale")
    assert itemknncbf.knn_neighbours is real
    assert [t["dim"] for t in figures["knn_measured"]] == [52]  # one concatenated text + image table

    features = torch.randn(300, 8).abs()
    stand_in = scale_module.sampled_knn(1, [])
    neighbours, similarities = stand_in(features, 5, budget_elements=300 * 100, shrink=10.0)
    expected_neighbours, expected_similarities = knn_neighbours(features, 5, budget_elements=300 * 100, shrink=10.0)
    torch.testing.assert_close(similarities[:100], expected_similarities[:100])
    assert torch.equal(neighbours[:100], expected_neighbours[:100])


def test_scale_benchmark_counts_the_per_epoch_hook_once(scale_module, tmp_path, monkeypatch):
    """Edge pruning runs once per epoch: an epoch extrapolated from a few batches must not scale
    it with the batches (a 2 s hook, one batch of at least 4 timed: scaled, the epoch would
    exceed 2 s x batches; counted once, it stays below as long as a batch takes under 1.5 s)."""
    from recbole_mm.model.freedom import FREEDOM

    pruning = FREEDOM.pre_epoch_processing
    monkeypatch.setattr(FREEDOM, "pre_epoch_processing", lambda self: (time.sleep(2.0), pruning(self))[1])
    figures = scale_module.run("FREEDOM", str(tmp_path), max_batches=1, eval_users=10, knn_chunks=1,
                               overrides={"state": "WARNING", "train_batch_size": 256},
                               generator=SMALL_SCALE, dataset_name="scale")
    assert figures["epoch_batches"] >= 4 and figures["pre_epoch_seconds"] >= 2.0
    assert figures["epoch_seconds"] < 2.0 * figures["epoch_batches"]


def test_scale_benchmark_stands_in_for_damrs_consistent_graphs(scale_module, tmp_path):
    """DA-MRS builds its modality-consistent item graphs with their own function: the stand-in
    covers it (real on the measured rows, k random neighbours elsewhere) and is undone after."""
    import recbole_mm.data.graphs as graphs

    real = graphs.consistent_knn_neighbours
    figures = scale_module.run("DAMRS", str(tmp_path), max_batches=1, eval_users=10, knn_chunks=1,
                               overrides={"state": "WARNING"}, generator=SMALL_SCALE, dataset_name="scale")
    assert graphs.consistent_knn_neighbours is real
    assert [t["dim"] for t in figures["knn_measured"]] == [52]

    features = {"image": torch.randn(200, 6), "text": torch.randn(200, 4)}
    stand_in = scale_module.sampled_consistent_knn(1, [])
    rows, columns = stand_in(features, 5, budget_elements=200 * 2 * 50)
    expected_rows, expected_columns = real(features, 5, budget_elements=200 * 2 * 50)
    head = expected_rows["image"] < 50  # the one measured chunk: rows 0..49
    assert torch.equal(rows["text"][:int(head.sum())], expected_rows["text"][head])
    for name in features:
        assert torch.equal(columns[name][:int(head.sum())], expected_columns[name][head])
    assert len(rows["image"]) == int(head.sum()) + 150 * 5  # the other 150 rows: k random neighbours
