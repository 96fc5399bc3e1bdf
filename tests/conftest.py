"""Shared fixtures: a small synthetic dataset and a config factory that keeps every run's
files (logs, checkpoints, caches) inside pytest's temporary folders."""
import os
import sys

import pytest

import recbole_mm  # noqa: F401  (patches RecBole before any test imports it)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_SYNTHETIC = {"seed": 7, "n_users": 300, "n_items": 200, "mean_interactions": 12}


@pytest.fixture(autouse=True)
def isolated_run(monkeypatch, tmp_path):
    """RecBole reads --key=value from sys.argv and writes log/ and saved/ into the working
    directory: give it neither pytest's arguments nor the repository."""
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture
def run_config(data_root, tmp_path):
    """Config dict for a short run on the small synthetic dataset (or any dataset in data_root)."""

    def make(**overrides):
        config = {
            "data_path": data_root,
            "checkpoint_dir": str(tmp_path / "saved"),
            "synthetic_generator": dict(SMALL_SYNTHETIC),
            "epochs": 2,
            "state": "WARNING",
            "show_progress": False,
        }
        config.update(overrides)
        return config

    return make
