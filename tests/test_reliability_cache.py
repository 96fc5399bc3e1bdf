"""The kNN graph cache: where it goes (``cache_dir``, the user-cache fallback for read-only
dataset folders), damaged files rebuilt, parallel writers (issue 14, defects 2 and 3)."""
import logging
import multiprocessing
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from recbole_mm.data.graphs import item_knn_graph, load_cached_graph, store_cached_graph
from recbole_mm.data.synthetic import ensure_synthetic_dataset
from recbole_mm.files import resolve_cache_dir, user_cache_dir
from recbole_mm.quick_start import run_recbole_mm
from tests.conftest import SMALL_SYNTHETIC

WEIGHTS = {"image": 0.1, "text": 0.9}


def features(n_items=60, seed=0):
    rng = np.random.default_rng(seed)
    return {name: torch.from_numpy(rng.standard_normal((n_items, dim)).astype(np.float32))
            for name, dim in (("image", 12), ("text", 8))}


def same_graph(a, b):
    return torch.equal(a.indices(), b.indices()) and torch.equal(a.values(), b.values())


def snapshot(folder):
    """Every path under ``folder`` with its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            found[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns)
    return found


# ---------------------------------------------------------------------- cache_dir
def test_cache_dir_setting(tmp_path, monkeypatch):
    data = str(tmp_path / "data" / "baby")
    assert resolve_cache_dir("auto", data) == os.path.join(data, "recbole_mm_cache")
    for off in (None, False, "", "~", "None", "none", "false"):
        assert resolve_cache_dir(off, data) is None
    assert resolve_cache_dir(str(tmp_path / "mine"), data) == str(tmp_path / "mine")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir("~/graphs", data) == str(tmp_path / "home" / "graphs")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    other = str(tmp_path / "elsewhere" / "baby")
    assert user_cache_dir(data).startswith(str(tmp_path / "xdg" / "recbole_mm" / "baby-"))
    assert user_cache_dir(data) != user_cache_dir(other), "keyed by the dataset's path, not its name"


def test_unwritable_cache_dir_falls_back_to_the_user_cache_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        chosen = resolve_cache_dir(str(blocker / "cache"), str(tmp_path / "baby"))
    assert chosen == user_cache_dir(str(tmp_path / "baby")) and os.path.isdir(chosen)
    assert f"cannot write to {blocker / 'cache'}" in caplog.text and chosen in caplog.text


def test_no_writable_cache_at_all_means_no_disk_cache(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "xdg"))
    with caplog.at_level(logging.WARNING):
        assert resolve_cache_dir(str(blocker / "cache"), str(tmp_path / "baby")) is None
    assert "without a disk cache" in caplog.text


# ---------------------------------------------------------------------- read-only dataset
@pytest.fixture
def dataset_copy(data_root, tmp_path):
    """A private copy of the small synthetic dataset (generated first if needed), without cache."""
    ensure_synthetic_dataset(os.path.join(data_root, "synthetic"), "synthetic", SMALL_SYNTHETIC)
    root = tmp_path / "readonly"
    shutil.copytree(os.path.join(data_root, "synthetic"), root / "synthetic",
                    ignore=shutil.ignore_patterns("recbole_mm_cache"))
    return root


def train_freedom_on(root, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = {"data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING",
              "synthetic_generator": dict(SMALL_SYNTHETIC), "epochs": 1}
    before = snapshot(root)
    with caplog.at_level(logging.WARNING):
        result = run_recbole_mm("FREEDOM", "synthetic", config_dict=config)
    assert result["test_result"] is not None
    assert snapshot(root) == before, "nothing is written to the dataset folder"
    fallback = user_cache_dir(str(root / "synthetic"))
    assert [name for name in os.listdir(fallback) if name.startswith("knn_")], "the graph went to the user cache"
    assert f"cannot write to {root / 'synthetic' / 'recbole_mm_cache'}" in caplog.text and fallback in caplog.text
    return result


def test_freedom_trains_when_its_cache_folder_cannot_be_made(dataset_copy, tmp_path, monkeypatch, caplog):
    """Runs as root too: a file where the cache folder would go blocks it as chmod would."""
    (dataset_copy / "synthetic" / "recbole_mm_cache").write_text("not a folder")
    train_freedom_on(dataset_copy, tmp_path, monkeypatch, caplog)


def chmod_binds(folder):
    """True when a read-only folder stops this process (not so for root with CAP_DAC_OVERRIDE)."""
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        (folder / "probe").write_text("")
    except PermissionError:
        return True
    finally:
        folder.chmod(stat.S_IRWXU)
    return False


def test_freedom_trains_on_a_read_only_dataset_folder(dataset_copy, tmp_path, monkeypatch, caplog):
    if not chmod_binds(tmp_path / "probe"):
        pytest.skip("file permissions do not bind this user (root): see the test above")
    folders = [dataset_copy / "synthetic", dataset_copy]
    for folder in folders:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        train_freedom_on(dataset_copy, tmp_path, monkeypatch, caplog)
    finally:
        for folder in folders:
            folder.chmod(stat.S_IRWXU)


# ---------------------------------------------------------------------- damaged files
def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def garbage(path):
    open(path, "wb").write(np.random.default_rng(0).bytes(500))


def empty(path):
    open(path, "wb").close()


def tamper(path):
    record = torch.load(path, weights_only=True)
    record["values"][0] += 1.0  # one weight changed, the header's checksum kept
    torch.save(record, path)


def other_graph(path):
    record = torch.load(path, weights_only=True)
    record["key"] = "0" * 20  # a whole, valid file of another graph under this name
    torch.save(record, path)


@pytest.mark.parametrize("damage", [truncate, garbage, empty, tamper, other_graph])
def test_a_damaged_cache_file_is_reported_and_rebuilt(tmp_path, caplog, damage):
    feats, cache = features(), str(tmp_path / "cache")
    fresh = item_knn_graph(feats, WEIGHTS, k=5, cache_dir=cache)
    (path,) = [os.path.join(cache, name) for name in os.listdir(cache)]
    damage(path)
    with caplog.at_level(logging.WARNING):
        rebuilt = item_knn_graph(feats, WEIGHTS, k=5, cache_dir=cache)
    assert same_graph(rebuilt, fresh)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"kNN cache {path} is invalid" in warnings[0] and "rebuilding" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert same_graph(item_knn_graph(feats, WEIGHTS, k=5, cache_dir=cache), fresh)
    assert not caplog.records, "the rebuilt file is whole again"
    assert os.listdir(cache) == [os.path.basename(path)], "no temporary file left behind"


def test_a_record_of_another_size_is_refused(tmp_path, caplog):
    graph = item_knn_graph(features(), WEIGHTS, k=5)
    path = str(tmp_path / "g.pt")
    store_cached_graph(path, graph, "key")
    assert same_graph(load_cached_graph(path, graph.shape[0], "key"), graph)
    with caplog.at_level(logging.WARNING):
        assert load_cached_graph(path, graph.shape[0] + 1, "key") is None
    assert "shape" in caplog.text and path in caplog.text


def _write_repeatedly(path, seed, rounds):
    torch.set_num_threads(1)
    graph = item_knn_graph(features(n_items=1500, seed=seed), WEIGHTS, k=10)
    for _ in range(rounds):
        store_cached_graph(path, graph, "shared")


def test_parallel_writers_leave_a_whole_file(tmp_path, caplog):
    path = str(tmp_path / "cache" / "knn_shared.pt")
    os.makedirs(os.path.dirname(path))
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_repeatedly, args=(path, seed, 15)) for seed in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [writer.exitcode for writer in writers] == [0, 0, 0]
    with caplog.at_level(logging.WARNING):
        stored = load_cached_graph(path, 1500, "shared")
    assert stored is not None and not caplog.records
    candidates = [item_knn_graph(features(n_items=1500, seed=seed), WEIGHTS, k=10) for seed in range(3)]
    assert any(same_graph(stored, graph) for graph in candidates), "one writer's graph, whole"
    assert os.listdir(os.path.dirname(path)) == ["knn_shared.pt"]


def test_models_follow_the_cache_dir_setting(data_root, tmp_path, monkeypatch, run_config):
    from recbole_mm.model.freedom import FREEDOM
    from tests.conftest import build_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dataset_cache = os.path.join(data_root, "synthetic", "recbole_mm_cache")
    shutil.rmtree(dataset_cache, ignore_errors=True)
    build_model(run_config(cache_dir=None), FREEDOM)
    assert not os.path.exists(dataset_cache) and not os.path.exists(tmp_path / "xdg"), "~: no disk cache"
    mine = tmp_path / "mine"
    build_model(run_config(cache_dir=str(mine)), FREEDOM)
    assert [name for name in os.listdir(mine) if name.startswith("knn_")] and not os.path.exists(dataset_cache)
    build_model(run_config(), FREEDOM)
    assert [name for name in os.listdir(dataset_cache) if name.startswith("knn_")], "auto: the dataset folder"


def test_feature_writers_stage_their_own_temporaries(tmp_path):
    from recbole_mm.features.text import write_outputs

    text, image, ids = (str(tmp_path / name) for name in ("text_feat.npy", "image_feat.npy", "items.txt"))
    write_outputs({text: np.ones((2, 3)), image: np.zeros((2, 4))}, ids, ["a", "b"])
    before = {path: open(path, "rb").read() for path in (text, image, ids)}
    with pytest.raises(ValueError):  # the second matrix cannot be written: nothing is replaced
        write_outputs({text: np.full((2, 3), 7.0), image: [[1.0], "x"]}, ids, ["c", "d"])
    assert {path: open(path, "rb").read() for path in before} == before
    assert sorted(os.listdir(tmp_path)) == ["image_feat.npy", "items.txt", "text_feat.npy"]
