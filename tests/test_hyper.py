"""Hyper-parameter search (recbole_mm.hyper): search spaces, trial keys, the journal, selection
on valid, the local process pool, resuming, and the Ray backend against the local one."""
import csv
import json
import math
import os
import subprocess
import sys
import pytest

from recbole_mm import hyper
from tests.hyper_echo import die_on_key_1, echo_device

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
    path.write_text(text)
    return str(path)


# --- search spaces -------------------------------------------------------------------------

def test_recbole_hyper_file_choices_are_a_grid_in_file_order(tmp_path):
    path = write(tmp_path / "hyper.test", "# a comment\nlearning_rate choice [0.01,0.001]\n\n"
                                          "mlp_hidden_size choice ['[64,64]','[128]']  # strings stay strings\n"
                                          "n_layers choice [1,2,3]\n")
    space = hyper.read_hyper_file(path)
    assert space["learning_rate"] == ("choice", [0.01, 0.001])
    assert space["mlp_hidden_size"] == ("choice", ["[64,64]", "[128]"])
    trials = hyper.space_trials(space)
    assert len(trials) == 12
    assert trials[0] == {"learning_rate": 0.01, "mlp_hidden_size": "[64,64]", "n_layers": 1}
    assert trials[-1] == {"learning_rate": 0.001, "mlp_hidden_size": "[128]", "n_layers": 3}


@pytest.mark.parametrize("line, message", [
    ("learning_rate choice", "expected 'name distribution values'"),
    ("learning_rate normal 0,1", "unknown distribution 'normal'"),
    ("learning_rate choice 0.1", "cannot read the values of learning_rate choice"),
    ("dropout uniform 0.1", "cannot read the values of dropout uniform"),
])
def test_a_bad_hyper_file_line_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "hyper.test", f"reg_weight choice [0.1]\n{line}\n")
    with pytest.raises(hyper.HyperFileError, match=message) as error:
        hyper.read_hyper_file(path)
    assert f"{path}:2" in str(error.value)


def test_continuous_distributions_need_samples_and_are_drawn_seeded(tmp_path):
    path = write(tmp_path / "hyper.test", "lr loguniform -8,0\ndropout uniform 0.1,0.5\nknn_k quniform 5,20,5\n"
                                          "embedding_size choice [32,64]\n")
    space = hyper.read_hyper_file(path)
    with pytest.raises(ValueError, match="lr, dropout, knn_k need samples=N"):
        hyper.space_trials(space)
    trials = hyper.space_trials(space, samples=20, seed=3)
    assert trials == hyper.space_trials(space, samples=20, seed=3)
    assert trials != hyper.space_trials(space, samples=20, seed=4)
    assert all(math.exp(-8) <= t["lr"] <= 1 and 0.1 <= t["dropout"] <= 0.5 for t in trials)
    assert {t["knn_k"] for t in trials} <= {5.0, 10.0, 15.0, 20.0}
    assert {t["embedding_size"] for t in trials} == {32, 64}


# --- trial identity and the journal --------------------------------------------------------

def test_trial_key_is_what_defines_the_trial(tmp_path):
    yaml = tmp_path / "exp.yaml"
    yaml.write_text("epochs: 2\n")
    key = hyper.trial_key("VBPR", "synthetic", [str(yaml)], {"learning_rate": 0.01, "reg_weight": 0.1})
    assert key == hyper.trial_key("VBPR", "synthetic", [str(yaml)], {"reg_weight": 0.1, "learning_rate": 0.01})
    assert key == hyper.trial_key("VBPR", "synthetic", [str(yaml)], {
        "reg_weight": 0.1, "learning_rate": 0.01, "checkpoint_dir": "elsewhere", "gpu_id": "3", "state": "INFO"})
    assert key != hyper.trial_key("VBPR", "synthetic", [str(yaml)], {"learning_rate": 0.01, "reg_weight": 1.0})
    assert key != hyper.trial_key("FREEDOM", "synthetic", [str(yaml)], {"learning_rate": 0.01, "reg_weight": 0.1})
    yaml.write_text("epochs: 3\n")
    assert key != hyper.trial_key("VBPR", "synthetic", [str(yaml)], {"learning_rate": 0.01, "reg_weight": 0.1})


def test_journal_keeps_finished_trials_and_skips_a_line_cut_short(tmp_path):
    journal = hyper.Journal(str(tmp_path / "runs" / "VBPR_synthetic.jsonl"))
    assert journal.load() == {}
    journal.append({"key": "a", "status": "ok", "best_valid_score": 0.1})
    journal.append({"key": "b", "status": "error", "error": "boom"})
    with open(journal.path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "c", "status": "o')  # the process was killed mid-write
    journal.append({"key": "d", "status": "ok", "best_valid_score": 0.2})
    assert sorted(journal.load()) == ["a", "d"]
    assert journal.load()["d"]["best_valid_score"] == 0.2


# --- selection on valid and the tables ------------------------------------------------------

def record(key, params, valid, test, bigger=True, trial=0):
    return {"key": key, "params": params, "status": "ok", "trial": trial, "seed": 2020, "time_s": 1.0,
            "valid": {"recall@20": valid, "ndcg@20": valid / 2, "recall@10": valid / 3},
            "test": {"recall@20": test, "ndcg@20": test / 2, "recall@10": test / 3},
            "best_valid_score": valid, "valid_score_bigger": bigger}


def test_selection_is_on_valid_not_test(tmp_path):
    records = [record("a", {"lr": 0.1}, 0.30, 0.50, trial=0), record("b", {"lr": 0.01}, 0.40, 0.20, trial=1),
               {"key": "c", "params": {"lr": 1.0}, "status": "error", "error": "Traceback\nValueError: nan loss",
                "trial": 2, "time_s": 0.5}]
    best = hyper.select_best(records)
    assert best["key"] == "b", "the best valid score wins although 'a' has the best test score"
    smaller = [record("a", {"lr": 0.1}, 0.30, 0.5, bigger=False), record("b", {"lr": 0.01}, 0.40, 0.2, bigger=False)]
    assert hyper.select_best(smaller)["key"] == "a"
    assert hyper.select_best(records[2:]) is None

    stem = str(tmp_path / "hyper" / "VBPR_synthetic")
    hyper.write_tables(records, best, stem, "Recall@20", "VBPR on synthetic")
    rows = list(csv.DictReader(open(stem + ".csv", encoding="utf-8")))
    assert [row["selected"] for row in rows] == ["0", "1", "0"]
    assert float(rows[1]["valid_recall@20"]) == 0.40 and float(rows[1]["test_recall@20"]) == 0.20
    assert rows[2]["status"] == "error" and rows[2]["valid_recall@20"] == ""
    markdown = open(stem + ".md", encoding="utf-8").read()
    assert "Selected on **valid recall@20** (MMRec selects on test): trial 1" in markdown
    assert "| **1** (selected) | 0.0100 |" in markdown
    assert "failed: ValueError: nan loss" in markdown
    assert "valid recall@10" not in markdown and "valid recall@20" in markdown, "markdown: the valid cutoff only"


# --- the local pool: a process per trial, one device per running trial ----------------------

def test_local_pool_gives_each_running_trial_its_own_gpu_and_process():
    tasks = [{"key": str(index), "threads": 1} for index in range(6)]
    records = []
    hyper.run_local(tasks, records.append, workers=2, gpus=["2", "5"], function=echo_device)
    assert sorted(r["key"] for r in records) == [str(index) for index in range(6)]
    assert {r["device"] for r in records} == {"2", "5"}
    assert len({r["pid"] for r in records}) == 6 and os.getpid() not in {r["pid"] for r in records}
    for device in ("2", "5"):
        spans = sorted((r["start"], r["end"]) for r in records if r["device"] == device)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), \
            f"two trials ran on GPU {device} at once"


def test_a_trial_process_that_dies_is_recorded_and_the_search_stops_resumably():
    tasks = [{"key": str(index), "params": {"i": index}, "threads": 1} for index in range(3)]
    records = []
    with pytest.raises(RuntimeError, match="run the search again to resume"):
        hyper.run_local(tasks, records.append, workers=1, function=die_on_key_1)
    assert [(r["key"], r.get("status")) for r in records] == [("0", None), ("1", "error")]
    assert "process died" in records[1]["error"]


def test_search_runs_only_the_trials_missing_from_the_journal(tmp_path, monkeypatch):
    """Resuming, without training: the pool is replaced by a stub that records what it is given."""
    config = {"epochs": 1, "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved")}
    grid = {"learning_rate": [0.1, 0.01], "reg_weight": [1.0, 0.5]}
    dispatched = []

    def stub_pool(tasks, on_done, workers=None, gpus=()):
        for task in tasks:
            dispatched.append(task["params"])
            lr = task["params"]["learning_rate"]
            on_done({**record(task["key"], task["params"], lr, lr), "trial": None})

    monkeypatch.setattr(hyper, "run_local", stub_pool)
    journal = hyper.Journal(str(tmp_path / "results" / "VBPR_synthetic.jsonl"))
    for params in ({"learning_rate": 0.1, "reg_weight": 1.0}, {"learning_rate": 0.01, "reg_weight": 0.5}):
        key = hyper.trial_key("VBPR", "synthetic", [], {**config, **params})
        journal.append({**record(key, params, 0.9, 0.9), "time_s": -1.0})  # finished before the interruption
    best, records = hyper.run_hyper("VBPR", "synthetic", config_dict=config, hyper_parameters=grid,
                                    results_dir=str(tmp_path / "results"))
    assert dispatched == [{"learning_rate": 0.1, "reg_weight": 0.5}, {"learning_rate": 0.01, "reg_weight": 1.0}]
    assert [r["params"] for r in records] == hyper.space_trials(hyper.grid_space(grid))
    assert [r["trial"] for r in records] == [0, 1, 2, 3]
    assert [r["time_s"] for r in records] == [-1.0, 1.0, 1.0, -1.0]
    assert best["params"] == {"learning_rate": 0.1, "reg_weight": 1.0}
    dispatched.clear()
    hyper.run_hyper("VBPR", "synthetic", config_dict=config, hyper_parameters=grid, results_dir=str(tmp_path / "results"))
    assert dispatched == [], "a finished search runs nothing again"


def test_command_line_overrides_are_parsed_like_recbole(monkeypatch, capsys):
    seen = {}

    def stub_search(model, dataset, config_file_list, config_dict, **search):
        seen.update(model=model, dataset=dataset, files=config_file_list, config=config_dict, **search)
        best = record("k", {"reg_weight": 0.1}, 0.3, 0.2)
        return best, [best]

    monkeypatch.setattr(hyper, "run_hyper", stub_search)
    status = hyper.main(["--hyper", "--model=FREEDOM", "--dataset=baby", "--backend=ray", "--workers=3",
                         "--epochs=5", "--learning_rate=1e-3", "--use_gpu=False", "--topk=[10,20]"])
    assert status == 0
    assert seen["model"] == "FREEDOM" and seen["backend"] == "ray" and seen["workers"] == 3
    assert seen["config"] == {"epochs": 5, "learning_rate": 1e-3, "use_gpu": False, "topk": [10, 20]}
    out = capsys.readouterr().out
    assert 'selected on valid: {"reg_weight": 0.1}' in out and "test result: recall@20: 0.2000" in out


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert hyper.main(["--hyper", "--model=NoSuchModel"]) == 2
    assert "Unknown model 'NoSuchModel'" in capsys.readouterr().err
    path = write(tmp_path / "hyper.test", "dropout uniform 0.1,0.5\n")
    assert hyper.main(["--hyper", "--model=VBPR", f"--params_file={path}", f"--results_dir={tmp_path}"]) == 2
    assert "dropout need samples=N" in capsys.readouterr().err
    assert hyper.main(["--hyper", "--model=VBPR", "--params_file=missing.test"]) == 2
    assert "missing.test" in capsys.readouterr().err


def test_ray_backend_says_how_to_install_a_usable_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not importable
    with pytest.raises(ImportError, match=r'pip install "ray\[tune\]>=2.58,<3"'):
        hyper.import_ray()


def test_the_search_module_imports_ray_only_inside_the_ray_backend():
    """Importing recbole_mm.hyper must not import ray (RecBole's pinned ray does not import):
    no module-level import of it (test_compat checks the package's other modules at run time)."""
    import ast

    tree = ast.parse(open(hyper.__file__, encoding="utf-8").read())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom)}
    assert not {name for name in names if name and name.split(".")[0] == "ray"}


# --- end to end: real trials, both backends --------------------------------------------------

GRID = "learning_rate choice [0.0001,0.01]\nreg_weight choice [0.001,0.1]\n"


@pytest.fixture(scope="module")
def search_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hyper")
    exp = root / "exp.yaml"
    exp.write_text(
        f"data_path: {root / 'data'}\ncheckpoint_dir: {root / 'saved'}\nstate: WARNING\nshow_progress: False\n"
        "synthetic_generator: {seed: 7, n_users: 300, n_items: 200, mean_interactions: 12}\n"
    )
    grid = root / "hyper.test"
    grid.write_text(GRID)
    return root, str(exp), str(grid)


@pytest.fixture(scope="module")
def local_search(search_setup):
    """The 4-trial grid on the local backend, through the command line (2 workers)."""
    root, exp, grid = search_setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT}
    done = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "run_recbole_mm.py"), "--hyper", "--model=VBPR", "--dataset=synthetic",
         f"--config_files={exp}", f"--params_file={grid}", "--workers=2", f"--results_dir={root / 'local'}",
         "--epochs=2"],
        cwd=root, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return root, done.stdout, str(root / "local" / "VBPR_synthetic")


def table(stem, drop=("time_s",)):
    rows = list(csv.DictReader(open(stem + ".csv", encoding="utf-8")))
    return [{name: value for name, value in row.items() if name not in drop} for row in rows]


def journal_lines(stem):
    return [json.loads(line) for line in open(stem + ".jsonl", encoding="utf-8")]


@pytest.mark.slow
def test_local_search_runs_each_trial_in_its_own_process_and_selects_on_valid(local_search):
    _, stdout, stem = local_search
    records = journal_lines(stem)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert len({r["pid"] for r in records}) == 4
    rows = table(stem)
    assert [(float(row["learning_rate"]), float(row["reg_weight"])) for row in rows] == [
        (0.0001, 0.001), (0.0001, 0.1), (0.01, 0.001), (0.01, 0.1)]
    valid = [float(row["valid_recall@20"]) for row in rows]
    selected = [row["selected"] for row in rows].index("1")
    assert valid[selected] == max(valid)
    assert all(row["test_recall@20"] and row["test_ndcg@50"] and row["valid_gauc"] for row in rows)
    assert "4 of 4 trials finished" in stdout and "selected on valid:" in stdout
    assert "(selected)" in open(stem + ".md", encoding="utf-8").read()


@pytest.mark.slow
def test_interrupted_search_resumes_without_rerunning_finished_trials(local_search, search_setup, tmp_path):
    from recbole_mm.config import Config

    root, exp, grid = search_setup
    _, _, full = local_search
    stem = str(tmp_path / "VBPR_synthetic")
    finished = journal_lines(full)[:2]
    with open(stem + ".jsonl", "w", encoding="utf-8") as handle:
        for line in finished:
            handle.write(json.dumps({**line, "time_s": -1.0}) + "\n")
        handle.write('{"key": "' + journal_lines(full)[2]["key"] + '", "status": "o')  # killed mid-write
    overrides = Config._convert_config_dict(None, {"epochs": "2"})
    _, records = hyper.run_hyper("VBPR", "synthetic", [exp], overrides, params_file=grid, workers=2,
                                 results_dir=str(tmp_path))
    lines = open(stem + ".jsonl", encoding="utf-8").read().splitlines()
    assert len(lines) == 5, "2 finished + the line cut short + 2 new"
    ran = {json.loads(line)["key"] for line in lines[3:]}
    assert ran == {r["key"] for r in journal_lines(full)[2:]}
    assert [r["time_s"] for r in records][:2] == [-1.0, -1.0]
    assert table(stem) == table(full), "resumed search = uninterrupted search"


@pytest.fixture(scope="module")  # module scope: set up before the module-scoped local search
def usable_ray():
    """Skips (fails under CI, which must run the Ray test) when no usable Ray is installed."""
    try:
        hyper.import_ray()
    except ImportError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Ray test: {error}")
        pytest.skip(str(error))


@pytest.mark.slow
def test_ray_backend_gives_the_local_backends_table(usable_ray, local_search, search_setup, tmp_path):
    """Ray started on this machine with 2 CPUs, the same 4 trials: the same table (each trial is
    seeded and runs alone in its process with one thread, so the metrics agree exactly)."""
    from recbole_mm.config import Config

    _, exp, grid = search_setup
    _, _, local = local_search
    overrides = Config._convert_config_dict(None, {"epochs": "2"})
    best, records = hyper.run_hyper("VBPR", "synthetic", [exp], overrides, params_file=grid, backend="ray",
                                    ray_num_cpus=2, results_dir=str(tmp_path))
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert table(str(tmp_path / "VBPR_synthetic")) == table(local)
    assert [r["pid"] for r in records if r["pid"] == os.getpid()] == [], "trials run in Ray workers"
    # Ray Tune's own experiment folder (<checkpoint_dir>/ray_tune/<name>) holds one directory per
    # trial, whose params and reported result are those of the journal's records
    root, _, _ = search_setup
    experiment = root / "saved" / "ray_tune" / "VBPR_synthetic"
    trials = [path for path in experiment.iterdir() if (path / "params.json").is_file()]
    assert len(trials) == 4, sorted(os.listdir(experiment))
    seen = {}
    for trial in trials:
        key = json.loads((trial / "params.json").read_text())["task"]["key"]
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        assert len(reports) == 1 and reports[0]["trial_id"], trial
        seen[key] = (reports[0]["trial_id"], json.loads(reports[0]["record"])["pid"])
    assert {key: pid for key, (_, pid) in seen.items()} == {r["key"]: r["pid"] for r in records}
    assert len({trial_id for trial_id, _ in seen.values()}) == 4, "four Ray trial ids"


@pytest.mark.slow
def test_guider_keys_in_a_search_space_reach_the_guider_trainer(search_setup, tmp_path):
    """``guider: true`` with two values of a ``guider_*`` key in the space: both trials finish,
    and they differ. The key acts only inside GUIDER's trainer (a plain VBPR ignores it, and
    every trial has the same seed), so different metrics show that the trials trained under
    GUIDER with the value the search gave them. The fallback is off: on two epochs it would keep
    the plain run in both trials, and the plain run ignores ``guider_kd``."""
    from recbole_mm.config import Config

    _, exp, _ = search_setup
    overrides = Config._convert_config_dict(None, {"epochs": "2", "guider": "True", "guider_warmup_epochs": "0",
                                                   "guider_teacher_pretrain_epochs": "1",
                                                   "guider_fallback": "False"})
    _, records = hyper.run_hyper("VBPR", "synthetic", [exp], overrides,
                                 hyper_parameters={"guider_kd": ["matched", "none"]}, workers=2,
                                 results_dir=str(tmp_path))
    assert [r["status"] for r in records] == ["ok", "ok"], [r.get("error", "")[-1500:] for r in records]
    assert [r["params"] for r in records] == [{"guider_kd": "matched"}, {"guider_kd": "none"}]
    assert records[0]["valid"] != records[1]["valid"], "the guider_kd value never reached a GUIDER trainer"
