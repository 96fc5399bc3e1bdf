"""quick_start API and the command line, as a user runs them."""
import os
import subprocess
import sys

import pytest
import torch

from recbole_mm.quick_start import grid_configs, load_data_and_model, objective_function, run_grid, run_recbole_mm
from recbole_mm.trainer import get_trainer
from tests.conftest import REPO_ROOT

METRIC_KEYS = {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit") for k in (5, 10, 20, 50)} | {"gauc"}


def test_run_returns_what_recbole_returns(run_config):
    result = run_recbole_mm("VBPR", "synthetic", config_dict=run_config(epochs=3))
    assert {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result"} <= set(result)
    assert set(result["test_result"]) == METRIC_KEYS
    assert result["best_valid_score"] == result["best_valid_result"]["recall@20"]
    assert result["valid_score_bigger"] is True


def test_saved_run_reloads_to_the_same_test_metrics(run_config):
    result = run_recbole_mm("VBPR", "synthetic", config_dict=run_config(epochs=3))
    config, model, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == dict(result["test_result"])


def test_objective_function_for_hyper_parameter_search(run_config):
    result = objective_function(config_dict={"model": "VBPR", "dataset": "synthetic", **run_config(epochs=2)})
    assert result["model"] == "VBPR" and set(result["test_result"]) == METRIC_KEYS


def test_grid_is_the_cartesian_product():
    grid = grid_configs({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(grid) == 6 and grid[0] == {"a": 1, "b": "x"} and grid[-1] == {"a": 2, "b": "z"}
    assert grid_configs({}) == [{}]


def test_grid_selects_on_valid_not_test(run_config):
    """Two trials (seeds 3 and 4, one thread so that they repeat exactly) whose valid and test
    winners differ: selecting on test would pick the other one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best, trials = run_grid("VBPR", "synthetic", config_dict=run_config(epochs=2),
                                hyper_parameters={"seed": [3, 4]})
    finally:
        torch.set_num_threads(threads)
    assert [t["params"] for t in trials] == [{"seed": 3}, {"seed": 4}]
    valid_winner = max(trials, key=lambda t: t["best_valid_score"])
    test_winner = max(trials, key=lambda t: t["test_result"]["recall@20"])
    assert valid_winner is not test_winner, [(t["best_valid_score"], t["test_result"]["recall@20"]) for t in trials]
    assert best is valid_winner and best["params"] == {"seed": 4}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "run_recbole_mm.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model", ["VBPR", "BPR"])
def test_command_line_trains_and_prints_test_metrics(tmp_path, model):
    done = run_cli(f"--model={model}", "--dataset=synthetic", "--epochs=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test result: recall@5:" in done.stdout and "gauc:" in done.stdout
    assert os.path.isfile(tmp_path / "dataset" / "synthetic" / "synthetic.inter"), "generated on first use"


def test_command_line_reads_config_files_and_overrides(tmp_path):
    (tmp_path / "exp.yaml").write_text("epochs: 1\ntopk: [10]\nmetrics: [Recall]\nvalid_metric: Recall@10\n")
    done = run_cli("--model=VBPR", "--dataset=synthetic", "--config_files=exp.yaml", "--learning_rate=0.01", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test result: recall@10:" in done.stdout and "recall@20" not in done.stdout


def test_nfvlm_protocol_runs_on_the_bundled_dataset(tmp_path):
    done = run_cli("--model=NFVLM", "--dataset=synthetic", f"--config_files={os.path.join(REPO_ROOT, 'properties', 'nfvlm.yaml')}",
                   "--epochs=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test result: gauc:" in done.stdout and "ndcg@10:" in done.stdout and "recall@10:" in done.stdout


def test_missing_mmrec_folder_is_one_clear_message(tmp_path):
    done = run_cli("--model=VBPR", "--dataset=baby", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "baby.inter" in done.stderr and "image_feat.npy" in done.stderr and "dataset/baby/" in done.stderr


def test_unknown_model_on_the_command_line(tmp_path):
    done = run_cli("--model=NoSuchModel", "--dataset=synthetic", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Unknown model 'NoSuchModel'" in done.stderr and "VBPR" in done.stderr


@pytest.mark.parametrize("model", ["VBPR", "LIRDRec", "FREEDOM", "DRAGON", "VLIF"])
def test_mmrec_folder_runs_end_to_end(tmp_path, model):
    """A baby-like MMRec folder (fake, small) under dataset/baby/ runs with the packaged baby.yaml."""
    import numpy as np

    from recbole_mm.data.synthetic import generate_synthetic

    folder = tmp_path / "dataset" / "baby"
    generate_synthetic(str(folder), "baby", {"n_users": 200, "n_items": 150, "modalities": {
        "text": {"dim": 384}, "image": {"dim": 4096}}})
    for meta in ("synthetic_meta.json", "planted_factors.npz"):
        os.remove(folder / meta)
    assert np.load(folder / "image_feat.npy").shape == (150, 4096)
    done = run_cli(f"--model={model}", "--dataset=baby", "--epochs=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test result:" in done.stdout
