"""Checkpoints: one file per trainer even within one second, written atomically, and the test
pass loads the file its own run wrote (issue 14, defect 1)."""
import datetime
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import recbole_mm.trainer.trainer as trainer_module
from recbole_mm.files import atomic_torch_save
from recbole_mm.model.vbpr import VBPR
from recbole_mm.quick_start import run_recbole_mm
from recbole_mm.trainer import GUIDERTrainer, MultiModalTrainer
from recbole_mm.trainer.trainer import CheckpointError, new_run_id
from tests.conftest import REPO_ROOT, build_model

SECOND = datetime.datetime(2025, 3, 5, 14, 3, 22, 123456)


@pytest.fixture
def frozen_clock(monkeypatch):
    """Every trainer is created at the same microsecond (the same second, a fortiori)."""
    frozen = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: SECOND))
    monkeypatch.setattr(trainer_module, "datetime", frozen)


def weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def two_trainers(run_config, trainer_class=MultiModalTrainer, **config):
    """Two trainers of differently seeded VBPR models on the same data and checkpoint folder."""
    trainers = []
    for seed in (1, 2):
        cfg, _, loaders, model = build_model(run_config(seed=seed, **config), VBPR)
        trainers.append(trainer_class(cfg, model))
    return trainers, loaders


def test_run_ids_differ_within_one_microsecond_of_one_process():
    ids = {new_run_id(SECOND) for _ in range(50)}
    assert len(ids) == 50
    assert all(run_id.startswith("Mar-05-2025_14-03-22.123456-p") for run_id in ids)


def test_two_trainers_created_in_the_same_second_save_to_different_files(run_config, frozen_clock):
    (first, second), _ = two_trainers(run_config)
    assert first.saved_model_file != second.saved_model_file
    assert os.path.dirname(first.saved_model_file) == os.path.dirname(second.saved_model_file)
    first._save_checkpoint(0, verbose=False)
    second._save_checkpoint(0, verbose=False)
    saved = weights(first.model)
    assert not same_weights(saved, weights(second.model))
    for parameter in first.model.parameters():  # the model moves on after its best epoch
        torch.nn.init.zeros_(parameter)
    first.load_checkpoint()
    assert same_weights(weights(first.model), saved), "the trainer reloads its own file, not the other's"


def test_guider_trainers_also_get_their_own_files(run_config, frozen_clock):
    (first, second), _ = two_trainers(run_config, GUIDERTrainer, guider=True)
    assert first.saved_model_file != second.saved_model_file
    first._save_checkpoint(0, verbose=False)
    assert torch.load(first.saved_model_file, weights_only=False)["run_id"] == first.run_id


def test_a_file_overwritten_by_another_run_is_refused_not_tested(run_config, frozen_clock):
    (first, second), loaders = two_trainers(run_config)
    first._save_checkpoint(0, verbose=False)
    second._save_checkpoint(0, verbose=False)
    # what two runs sharing one file name did: the second run's checkpoint lands on the first's path
    os.replace(second.saved_model_file, first.saved_model_file)
    with pytest.raises(CheckpointError, match=r"overwritten by another run") as error:
        first.evaluate(loaders[2], load_best_model=True)
    assert first.saved_model_file in str(error.value)


def test_evaluating_a_checkpoint_that_was_never_saved_says_so(run_config):
    (trainer, _), loaders = two_trainers(run_config)
    with pytest.raises(CheckpointError, match=r"saved none \(fit with saved=False\?\)"):
        trainer.evaluate(loaders[2], load_best_model=True)


def test_a_resumed_run_goes_on_under_the_checkpoint_s_id(run_config):
    (first, second), loaders = two_trainers(run_config)
    first._save_checkpoint(0, verbose=False)
    second.resume_checkpoint(first.saved_model_file)
    assert second.run_id == first.run_id and second.saved_model_file == first.saved_model_file
    assert second.evaluate(loaders[2], load_best_model=True) is not None


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temporary(run_config, monkeypatch):
    (trainer, _), _ = two_trainers(run_config)
    trainer._save_checkpoint(0, verbose=False)
    before = open(trainer.saved_model_file, "rb").read()

    def broken_save(obj, stream, **kwargs):
        stream.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer._save_checkpoint(1, verbose=False)
    assert open(trainer.saved_model_file, "rb").read() == before
    assert os.listdir(os.path.dirname(trainer.saved_model_file)) == [os.path.basename(trainer.saved_model_file)]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    path = str(tmp_path / "x.pt")
    atomic_torch_save({"a": 1}, path)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_two_runs_in_the_same_second_report_their_own_test_results(run_config, frozen_clock):
    runs = [run_recbole_mm("VBPR", "synthetic", config_dict=run_config(epochs=1, learning_rate=rate))
            for rate in (0.0001, 0.05)]
    files = [run["saved_model_file"] for run in runs]
    assert files[0] != files[1] and all(os.path.isfile(path) for path in files)
    assert runs[0]["test_result"] != runs[1]["test_result"], "the two runs differ"
    for run in runs:
        trainer = run["trainer"]
        assert torch.load(run["saved_model_file"], weights_only=False)["run_id"] == trainer.run_id
        for parameter in trainer.model.parameters():
            torch.nn.init.zeros_(parameter)
        _, _, loaders, _ = build_model(run_config(epochs=1), VBPR)
        assert dict(trainer.evaluate(loaders[2], load_best_model=True)) == dict(run["test_result"])


CHILD = """
import datetime, json, sys, types
config = json.loads(sys.argv[1])
sys.argv = ["child"]
import recbole_mm.trainer.trainer as trainer_module
second = datetime.datetime(2025, 3, 5, 14, 3, 22, 123456)  # both processes: the same microsecond
trainer_module.datetime = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: second))
from recbole_mm.quick_start import run_recbole_mm
run = run_recbole_mm("VBPR", "synthetic", config_dict=config)
print("RESULT " + json.dumps({"file": run["saved_model_file"], "run_id": run["trainer"].run_id,
                              "test": dict(run["test_result"])}))
"""


@pytest.mark.slow  # two interpreters that import RecBole and train: ~20 s on 2 cores
def test_two_processes_sharing_one_saved_folder_keep_their_own_checkpoints(run_config, tmp_path):
    """Two real processes, started together, each the first trainer of its process and both
    with the clock at the same microsecond, save into one checkpoint_dir: two files, each
    holding its own run's id and weights, each run's test pass reading its own file."""
    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset

    create_dataset(Config("VBPR", "synthetic", config_dict=run_config()))  # the data exists before both start
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    children = []
    for rate in (0.0001, 0.05):
        config = run_config(epochs=1, learning_rate=rate)
        children.append(subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(config)], cwd=tmp_path, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    runs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr[-3000:]
        runs.append(json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0]))
    first, second = runs
    assert first["run_id"] != second["run_id"] and first["file"] != second["file"]
    assert os.path.dirname(first["file"]) == os.path.dirname(second["file"]), "one shared folder"
    assert sorted(os.listdir(os.path.dirname(first["file"]))) == sorted(
        os.path.basename(run["file"]) for run in runs), "two files, nothing else (no temporary left)"
    checkpoints = [torch.load(run["file"], weights_only=False) for run in runs]
    assert [c["run_id"] for c in checkpoints] == [first["run_id"], second["run_id"]]
    assert not same_weights(checkpoints[0]["state_dict"], checkpoints[1]["state_dict"])
    assert first["test"] != second["test"], "the two runs differ"
    _, _, loaders, model = build_model(run_config(epochs=1), VBPR)
    for run, checkpoint in zip(runs, checkpoints):  # each reported test result is its own file's
        model.load_state_dict(checkpoint["state_dict"])
        cfg = Config("VBPR", "synthetic", config_dict=run_config(epochs=1))
        trainer = MultiModalTrainer(cfg, model)
        assert dict(trainer.evaluate(loaders[2], load_best_model=False)) == run["test"]
