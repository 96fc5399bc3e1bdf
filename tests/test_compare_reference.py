"""The pure parts of ``benchmarks/compare_reference.py``: log parsing, the table, the config
split between the two sides and the user-user graph (no reference checkout needed)."""
import importlib.util
import os

import numpy as np
import pytest

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "compare_reference.py")
spec = importlib.util.spec_from_file_location("compare_reference", PATH)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

MMREC_LOG = """\
25 Nov 23:47    INFO epoch 0 training [time: 0.48s, train loss: 9.5176]
25 Nov 23:47    INFO epoch 0 evaluating [time: 0.65s, valid_score: 0.016800]
25 Nov 23:47    INFO valid result: 
recall@5: 0.0100    recall@20: 0.0168    ndcg@20: 0.0080    
25 Nov 23:47    INFO test result: 
recall@5: 0.0090    recall@20: 0.0150    ndcg@20: 0.0070    
25 Nov 23:47    INFO epoch 1 training [time: 0.52s, train loss: 9.1000]
25 Nov 23:47    INFO epoch 1 evaluating [time: 0.75s, valid_score: 0.020000]
25 Nov 23:47    INFO epoch 2 training [time: 0.50s, train loss: 9.0000]
25 Nov 23:47    INFO epoch 2 evaluating [time: 0.70s, valid_score: 0.020000]
25 Nov 23:48    INFO best valid result: recall@5: 0.0120    recall@20: 0.0200    ndcg@20: 0.0090    
25 Nov 23:48    INFO test result: recall@5: 0.0110    recall@20: 0.0190    ndcg@20: 0.0085    
"""
RECBOLE_LOG = ("\x1b[1;32mepoch 0 training\x1b[0m [\x1b[1;34mtime\x1b[0m: 0.25s, \x1b[1;34mtrain loss\x1b[0m: 1.0]\n"
               "\x1b[1;32mepoch 0 evaluating\x1b[0m [\x1b[1;34mtime\x1b[0m: 0.10s, \x1b[1;34mvalid_score\x1b[0m: 0.5]\n")
MICRO_LOG = """\
Epoch 0 [3.1s + 1.2s]: train==[0.69000=0.68000 + 0.01000 + 0.00000], recall=[0.01000, 0.02000], precision=[0.001, 0.001], hit=[0.02, 0.03], ndcg=[0.00500, 0.00800]
Test_Recall@20: 0.01900
Epoch 1 [2.9s + 1.0s]: train==[0.60000=0.59000 + 0.01000 + 0.00000], recall=[0.01100, 0.01500], precision=[0.001, 0.001], hit=[0.02, 0.03], ndcg=[0.00600, 0.00700]
Epoch 2 [2.8s]: train==[0.59000=0.58000 + 0.01000 + 0.00000]
"""
MICRO_END = "{'precision': array([0.0013  , 0.001525]), 'recall': array([0.01275, 0.0285 ]), 'ndcg': array([0.00609164, 0.01061166]), 'auc': 0.0}\n"


def test_parse_mmrec_log():
    log = compare.parse_epoch_log(MMREC_LOG)
    assert log["train_seconds"] == [0.48, 0.52, 0.50]
    assert log["eval_seconds"] == [0.65, 0.75, 0.70]
    assert log["valid_scores"] == [0.0168, 0.02, 0.02]
    assert compare.epochs_to_best(log["valid_scores"]) == 2  # the tie at epoch 3 does not count
    valid, test = compare.parse_mmrec_result(MMREC_LOG)
    assert valid["recall@20"] == 0.02 and valid["ndcg@20"] == 0.009
    assert test == {"recall@5": 0.011, "recall@20": 0.019, "ndcg@20": 0.0085}  # the final one, not an epoch's


def test_parse_recbole_log_ignores_colours():
    log = compare.parse_epoch_log(RECBOLE_LOG)
    assert log == {"train_seconds": [0.25], "eval_seconds": [0.1], "valid_scores": [0.5]}


def test_parse_micro_log():
    log, valid, test = compare.parse_micro_log(MICRO_LOG)
    assert log["train_seconds"] == [3.1, 2.9, 2.8] and log["eval_seconds"] == [1.2, 1.0]
    assert valid == {"recall@20": 0.02, "ndcg@20": 0.008} and test == {"recall@20": 0.019}
    assert compare.parse_micro_log(MICRO_LOG + MICRO_END)[2] == {"recall@20": 0.0285, "ndcg@20": 0.01061166}


def test_table_rows_and_missing_values():
    row = compare.summarise("MMRec VBPR", compare.parse_epoch_log(MMREC_LOG), *compare.parse_mmrec_result(MMREC_LOG),
                            rss_kb=2048 * 1024, status="ok")
    failed = compare.summarise("recbole_mm VBPR", compare.parse_epoch_log(""), None, None, None, "exit 1")
    table = compare.markdown_table([row, failed]).splitlines()
    assert len(table) == 4 and table[0].count("|") == table[2].count("|") == len(compare.COLUMNS) + 1
    assert "| MMRec VBPR | 0.0200 | 0.0090 | 0.0190 | 0.0085 | 2 | 3 | 0.500 | 0.700 | 2048 | ok |" == table[2]
    assert table[3].startswith("| recbole_mm VBPR | - | - |")


def test_seeds_are_averaged_per_side_with_their_spread():
    def row(side, recall, seconds, status="ok"):
        return {"side": side, "status": status, "valid_recall@20": recall, "test_recall@20": None,
                "train_epoch_s": seconds, "epochs_run": 10}

    runs = [[row("MMRec X", 0.30, 1.0), row("recbole_mm X", 0.31, 0.5)],
            [row("MMRec X", 0.34, 3.0), row("recbole_mm X", 0.29, 0.7, status="exit 1")]]
    reference, ours = compare.mean_over_seeds(runs)
    assert reference["side"] == "MMRec X" and reference["seeds"] == 2 and reference["status"] == "ok"
    assert reference["valid_recall@20"] == pytest.approx(0.32)
    assert reference["valid_recall@20_std"] == pytest.approx(np.std([0.30, 0.34], ddof=1))
    assert reference["train_epoch_s"] == pytest.approx(2.0) and reference["test_recall@20"] is None
    assert ours["status"] == "exit 1" and ours["valid_recall@20"] == pytest.approx(0.30)
    assert [r["valid_recall@20"] for r in ours["per_seed"]] == [0.31, 0.29]
    line = compare.markdown_table([reference]).splitlines()[2]
    assert line.startswith("| MMRec X | 0.3200 ± 0.0283 | - | - |") and "| 10.0 ± 0.0 | 2.000 ± 1.414 |" in line


def test_config_split():
    fixed = compare.parse_sets(["n_layers=3", "aggr_mode='mean'", "learning_rate=1e-3"])
    assert fixed == {"n_layers": 3, "aggr_mode": "mean", "learning_rate": 0.001}
    grid = ["aggr_mode", "reg_weight", "learning_rate", "knn_k", "seed"]
    reference, ours, left = compare.split_configs("DRAGON", fixed, grid, {"reg_weight": 0.01, "n_ui_layers": 2})
    assert reference == {"n_layers": 3, "aggr_mode": "mean", "learning_rate": 0.001, "reg_weight": 0.01}
    assert ours == {"n_ui_layers": 3, "learning_rate": 0.001, "reg_weight": 0.01}  # renamed; aggr_mode is MMRec's only
    assert left == ["knn_k"]  # neither fixed nor ours: MMRec's first grid value
    with pytest.raises(ValueError, match="key=value"):
        compare.parse_sets(["reg_weight"])


def test_user_graph_dict_matches_pair_counts():
    rng = np.random.default_rng(3)
    n_users, n_items, cap = 30, 12, 5
    users, items = rng.integers(0, n_users - 2, 120), rng.integers(0, n_items, 120)  # the last two users have no items
    graph = compare.user_graph_dict(np.r_[users, users[:5]], np.r_[items, items[:5]], n_users, max_neighbours=cap)
    sets = [set(items[users == u].tolist()) for u in range(n_users)]
    assert sorted(graph) == list(range(n_users)) and graph[n_users - 1] == [[], []]
    for user in range(n_users):
        counts = {v: len(sets[user] & sets[v]) for v in range(n_users) if v != user and sets[user] & sets[v]}
        expected = sorted(counts, key=lambda v: (-counts[v], v))[:cap]
        assert graph[user][0] == expected
        assert graph[user][1] == [float(counts[v]) for v in expected]


def test_item_graph_dict_keeps_the_top_items_sharing_enough_users():
    """DA-MRS's item_graph_dict_2.npy: per item, the 2 items with most users in common among
    those with at least 2 (build_iib_graph.py --topk=2)."""
    rng = np.random.default_rng(4)
    n_users, n_items = 60, 15
    users, items = rng.integers(0, n_users, 110), rng.integers(0, n_items, 110)
    graph = compare.item_graph_dict(users, items, n_items, top_k=2, min_count=2)
    holders = [set(users[items == i].tolist()) for i in range(n_items)]
    checked = 0
    for item in range(n_items):
        counts = {j: len(holders[item] & holders[j]) for j in range(n_items) if j != item}
        expected = sorted((j for j in counts if counts[j] >= 2), key=lambda j: (-counts[j], j))[:2]
        assert graph[item] == [expected, [float(counts[j]) for j in expected]]
        checked += len(expected)
    assert checked > 0 and any(len(graph[i][0]) < 2 for i in range(n_items))  # the threshold bites somewhere


def test_reference_layouts_and_data_folder(tmp_path):
    checkout = tmp_path / "MMRec"
    (checkout / "src" / "utils").mkdir(parents=True)
    (checkout / "src" / "utils" / "quick_start.py").write_text("")
    for path in (checkout, checkout / "src"):  # the checkout or its src/
        work = tmp_path / f"work_{path.name}"
        work.mkdir()
        kind, root = compare.export_reference(str(path), str(work))
        assert kind == "mmrec" and os.path.isfile(os.path.join(root, "utils", "quick_start.py"))
        assert root.startswith(str(work))  # a copy: their tree is never written to
    with pytest.raises(ValueError, match="--reference"):
        compare.export_reference(str(tmp_path / "work_src"), str(tmp_path / "elsewhere"))
    fork = tmp_path / "MENTOR"  # the Jinfeng-Xu forks name MMRec's utils/ utils_package/
    (fork / "src" / "utils_package").mkdir(parents=True)
    (fork / "src" / "utils_package" / "quick_start.py").write_text("")
    (tmp_path / "work_fork").mkdir()
    kind, root = compare.export_reference(str(fork), str(tmp_path / "work_fork"))
    assert kind == "mmrec" and os.path.isfile(os.path.join(root, "utils_package", "quick_start.py"))

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t2\t1\n1\t1\t0\n1\t0\t2\n")
    with pytest.raises(ValueError, match="fake-features"):
        compare.link_data(str(folder), str(tmp_path / "w1"), fake_features=False, seed=0)
    root, name, users, items, n_users = compare.link_data(str(folder), str(tmp_path / "w2"), True, seed=0)
    assert name == "tiny" and n_users == 2 and users.tolist() == [0, 1] and items.tolist() == [0, 1]
    assert np.load(os.path.join(root, name, "image_feat.npy")).shape == (3, 4096)
    assert not (folder / "image_feat.npy").exists()
    # --modalities text: a one-modality run, the image file left out (MMRec's v_feat is then None)
    np.save(folder / "image_feat.npy", np.ones((3, 4), dtype=np.float32))
    np.save(folder / "text_feat.npy", np.ones((3, 2), dtype=np.float32))
    root, name = compare.link_data(str(folder), str(tmp_path / "w3"), False, seed=0, modalities=("text",))[:2]
    assert sorted(os.listdir(os.path.join(root, name))) == ["text_feat.npy", "tiny.inter"]


def test_interacted_items_only_drops_the_rows_nobody_interacted_with(tmp_path):
    """Items 1 and 3 of five have no interaction: their feature rows go, the others keep their
    rows under renumbered ids, the extra columns survive, and the user's folder is untouched."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    inter = "userID\titemID\tx_label\ttimestamp\n0\t0\t0\t5\n0\t2\t1\t6\n1\t4\t0\t7\n1\t0\t2\t8\n"
    (folder / "tiny.inter").write_text(inter)
    image = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.save(folder / "image_feat.npy", image)
    np.save(folder / "text_feat.npy", -image)
    root, name, users, items, n_users = compare.link_data(str(folder), str(tmp_path / "w"), False, seed=0,
                                                          interacted_items_only=True)
    assert users.tolist() == [0, 1] and items.tolist() == [0, 2] and n_users == 2  # train rows: items 0 and 4
    copy = os.path.join(root, name)
    assert np.array_equal(np.load(os.path.join(copy, "image_feat.npy")), image[[0, 2, 4]])
    assert np.array_equal(np.load(os.path.join(copy, "text_feat.npy")), -image[[0, 2, 4]])
    lines = open(os.path.join(copy, "tiny.inter")).read().splitlines()
    assert lines == ["userID\titemID\tx_label\ttimestamp", "0\t0\t0\t5", "0\t1\t1\t6", "1\t2\t0\t7", "1\t0\t2\t8"]
    assert (folder / "tiny.inter").read_text() == inter  # the links were replaced, not written through
    assert np.array_equal(np.load(folder / "image_feat.npy"), image)
    np.save(folder / "text_feat.npy", -image[:4])  # a feature file too short for the interactions
    with pytest.raises(ValueError, match="text_feat.npy: 4 rows, but tiny.inter has item id 4"):
        compare.link_data(str(folder), str(tmp_path / "w2"), False, seed=0, interacted_items_only=True)


def test_the_recorded_command_names_no_path_outside_the_workspace():
    argv = ["--model", "VLIF", "--data", "/elsewhere/exp/sports/", "--ref-python", "/elsewhere/venv/bin/python",
            "--epochs", "1"]
    assert compare.portable_arguments(argv) == ["--model", "VLIF", "--data", "<sports folder>", "--ref-python",
                                                "<a python with the reference's packages>", "--epochs", "1"]
    inside = os.path.join(compare.WORKSPACE, "data", "baby")
    assert compare.portable_arguments(["--data", inside]) == ["--data", inside]  # portable() places it


def _truncation_module():
    path = os.path.join(os.path.dirname(PATH), "truncated_loader.py")
    spec = importlib.util.spec_from_file_location("truncated_loader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RecBoleStyleLoader:
    """A fresh iterator per epoch, as RecBole's torch-based loaders."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


class _MMRecStyleLoader:
    """Its own iterator, its position in ``pr``, reset (and StopIteration) at the end of an
    epoch, as MMRec's ``AbstractDataLoader``."""

    def __init__(self, n):
        self.n, self.pr = n, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pr >= self.n:
            self.pr = 0
            raise StopIteration()
        self.pr += 1
        return self.pr - 1

    def __len__(self):
        return self.n


@pytest.mark.parametrize("loader_cls", [_RecBoleStyleLoader, _MMRecStyleLoader])
def test_truncated_loader_yields_the_first_batches_of_every_epoch(loader_cls):
    """``--max-batches``: every epoch (not only the first) trains on the first N batches; the
    truncated loader stays an instance of the loader's class; N beyond the loader is harmless."""
    truncation = _truncation_module()
    loader = truncation.truncated(loader_cls(10), 3)
    assert isinstance(loader, loader_cls) and len(loader) == 3
    assert [list(loader) for _ in range(4)] == [[0, 1, 2]] * 4
    assert list(truncation.truncated(loader_cls(2), 5)) == [0, 1]


def test_truncate_training_wraps_the_train_loader_of_fit_once():
    """The patched ``fit`` hands the original a loader cut to N batches; with a subclass's
    ``fit`` patched too (it calls ``super().fit``), the loader is cut once, not twice."""
    truncation = _truncation_module()
    seen = []

    class Trainer:
        def fit(self, train_data, valid_data=None):
            seen.append((type(train_data).__name__, list(train_data), valid_data))
            return "done"

    class GuiderLike(Trainer):
        def fit(self, train_data, valid_data=None):
            return super().fit(train_data, valid_data)

    original = truncation.truncate_training(Trainer, 2)
    own = truncation.truncate_training(GuiderLike, 2)
    try:
        assert GuiderLike().fit(_RecBoleStyleLoader(6), "valid") == "done"
        assert seen == [("Truncated_RecBoleStyleLoader", [0, 1], "valid")]
    finally:
        Trainer.fit, GuiderLike.fit = original, own


def test_max_batches_reaches_both_runners_through_the_environment(monkeypatch):
    """Both sides learn ``--max-batches`` from the same variable; without it, a value left in
    the caller's environment does not leak into the runs."""
    monkeypatch.setenv(compare.MAX_BATCHES_ENV, "7")
    assert compare.MAX_BATCHES_ENV not in compare.child_env()
    assert compare.child_env(3)[compare.MAX_BATCHES_ENV] == "3"
