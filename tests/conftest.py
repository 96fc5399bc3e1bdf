"""Shared fixtures: a small synthetic dataset and a config factory that keeps every run's
files (logs, checkpoints, caches) inside pytest's temporary folders."""
import ast
import os
import sys

import pytest
import torch

import recbole_mm  # noqa: F401  (patches RecBole before any test imports it)
from recbole.utils import init_seed

from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation

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


def build_model(config_dict, model_class, dataset_name="synthetic", config_files=None):
    """Config, dataset, (train, valid, test) loaders and a freshly seeded model instance."""
    config = Config(model_class, dataset_name, config_files, config_dict)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    loaders = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    return config, dataset, loaders, model_class(config, loaders[0]._dataset)


def train_steps(model, batch, steps, lr=1e-3, before_step=None):
    """``steps`` Adam steps of ``model`` (in training mode) on one fixed ``batch``; calls
    ``before_step()`` ahead of each (e.g. ``model.pre_epoch_processing``). Returns the losses."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        if before_step is not None:
            before_step()
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_steps_one_thread(model, batch, steps, lr=1e-3):
    """:func:`train_steps` on one thread: Adam's first step moves every element by ±lr, so a
    rounding-level gradient whose sign depends on a multi-threaded summation order would move
    by 2 lr (for tests that compare two models' updates exactly)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_steps(model, batch, steps, lr=lr)
    finally:
        torch.set_num_threads(threads)


def check_stale_eval_quirk(build, quirk_key, **overrides):
    """A ``<model>_stale_eval_quirk`` switch: ``True`` scores evaluation with the representations
    of the last training step, computed before its update (MMRec's ``result_embed``), ``False``
    with a fresh forward; training is the same either way and only the three stale buffers are
    added to the state. ``build(**config) -> (config, dataset, loaders, model)``; ``overrides``
    make the training forward reproducible (no dropout)."""
    results = {}
    for quirk in (False, True):
        _, _, loaders, model = build(**{quirk_key: quirk}, **overrides)
        users = torch.arange(model.n_users)
        model.train()
        with torch.no_grad():
            before = model.forward()
        loss = train_steps_one_thread(model, next(iter(loaders[0])), 1, lr=0.05)
        model.eval()
        scores = model.full_sort_predict({model.USER_ID: users}).view(model.n_users, -1)
        with torch.no_grad():
            after = model.forward()
        results[quirk] = (loss, scores, before, after, [p.detach().clone() for p in model.parameters()],
                          set(model.state_dict()))
    for quirk, (_, scores, before, after, _, _) in results.items():
        stale, fresh = before[0] @ before[1].T, after[0] @ after[1].T
        assert torch.allclose(scores, stale if quirk else fresh, atol=1e-5)
        assert not torch.allclose(scores, fresh if quirk else stale, atol=1e-4)
    assert results[False][0] == results[True][0]
    assert all(torch.equal(a, b) for a, b in zip(results[False][4], results[True][4])), "same updates"
    assert results[True][5] - results[False][5] == {"stale_users", "stale_items", "stale_ready"}


def check_frozen_tables(model, tables, frozen, batch, trained, lr=1e-3):
    """Three Adam steps on ``batch``, then: each of ``tables`` (name -> tensor) is a parameter that
    moved (``frozen`` False) or a buffer that did not (``frozen`` True; a reference's plain tensor
    attribute), saved with the model either way, while the tensor ``trained`` moves either way."""
    before = {name: table.detach().clone() for name, table in tables.items()}
    trained_before = trained.detach().clone()
    parameters = {id(p) for p in model.parameters()}
    train_steps(model, batch, 3, lr=lr)
    for name, table in tables.items():
        assert (id(table) in parameters) is not frozen, name
        assert torch.equal(table, before[name]) is frozen, name
        assert any(key.endswith(name) for key in model.state_dict()), "saved with the model either way"
    assert not torch.equal(trained, trained_before), "the rest trains either way"


def train_each(root, models, dataset_name, config_files=None, **config):
    """``run_recbole_mm`` for each model on the same data, isolated in ``root`` (logs, data,
    checkpoints) with pytest's arguments kept out of RecBole's command-line parsing.

    Returns:
        dict model name -> run result.
    """
    from recbole_mm.quick_start import run_recbole_mm

    shared = {"data_path": str(root / "data"), "checkpoint_dir": str(root / "saved"), "state": "WARNING", **config}
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["pytest"])
        patch.chdir(root)
        for model in models:
            runs[model] = run_recbole_mm(model, dataset_name, config_files, dict(shared))
    return runs


def top_level_imports(folder):
    """The top-level package names the ``.py`` files of ``folder`` import (absolute imports only)."""
    imported = set()
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    return imported
