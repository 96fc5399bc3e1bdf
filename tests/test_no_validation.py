"""Runs without validation (an empty valid split, ``eval_step: 0``) say so before training,
train every epoch, and test the last epoch's model (issue 14, defect 4)."""
import logging
import os

import pandas as pd
import torch

from recbole_mm.data.synthetic import ensure_synthetic_dataset
from recbole_mm.model.vbpr import VBPR
from recbole_mm.quick_start import run_recbole_mm
from recbole_mm.trainer import MultiModalTrainer
from run_recbole_mm import format_metrics
from tests.conftest import SMALL_SYNTHETIC, build_model

EPOCHS = 3


def fit_watching_the_warning(trainer, loaders, caplog):
    """``fit`` that records, at each epoch, whether the no-validation warning was already out."""
    seen_at_epoch = []
    train_epoch = trainer._train_epoch

    def watched(*args, **kwargs):
        seen_at_epoch.append("No validation" in caplog.text)
        return train_epoch(*args, **kwargs)

    trainer._train_epoch = watched
    with caplog.at_level(logging.WARNING):
        best = trainer.fit(loaders[0], loaders[1], verbose=False)
    return best, seen_at_epoch


def test_eval_step_zero_trains_every_epoch_and_tests_the_last(run_config, caplog):
    config, _, loaders, model = build_model(run_config(epochs=EPOCHS, eval_step=0), VBPR)
    trainer = MultiModalTrainer(config, model)
    (score, result), seen_at_epoch = fit_watching_the_warning(trainer, loaders, caplog)
    assert seen_at_epoch == [True] * EPOCHS, "warned before the first epoch, and every epoch ran"
    assert f"No validation (eval_step is 0): training all {EPOCHS} epochs without early stopping" in caplog.text
    assert result is None
    assert torch.load(trainer.saved_model_file, weights_only=False)["epoch"] == EPOCHS - 1
    last = trainer.evaluate(loaders[2], load_best_model=False)
    assert dict(trainer.evaluate(loaders[2], load_best_model=True)) == dict(last)


def test_validation_on_the_usual_schedule_gives_no_warning(run_config, caplog):
    config, _, loaders, model = build_model(run_config(epochs=1), VBPR)
    (_, result), _ = fit_watching_the_warning(MultiModalTrainer(config, model), loaders, caplog)
    assert result is not None and "No validation" not in caplog.text


def test_an_empty_valid_split_runs_without_early_stopping(data_root, tmp_path, caplog):
    source = os.path.join(data_root, "synthetic")
    ensure_synthetic_dataset(source, "synthetic", SMALL_SYNTHETIC)
    folder = tmp_path / "data" / "novalid"
    folder.mkdir(parents=True)
    frame = pd.read_csv(os.path.join(source, "synthetic.inter"), sep="\t")
    frame.loc[frame["x_label"] == 1, "x_label"] = 0  # the valid rows join train: no valid split
    frame.to_csv(folder / "novalid.inter", sep="\t", index=False)
    for name in ("text_feat.npy", "image_feat.npy"):
        os.symlink(os.path.join(source, name), folder / name)
    config = {"data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING",
              "epochs": EPOCHS, "modality_files": {"text": "text_feat.npy", "image": "image_feat.npy"}}
    with caplog.at_level(logging.WARNING):
        run = run_recbole_mm("VBPR", "novalid", config_dict=config)
    assert "No validation (the valid split is empty)" in caplog.text
    assert len(run["trainer"].train_loss_dict) == EPOCHS
    assert run["best_valid_result"] is None and run["test_result"] is not None
    assert format_metrics(run["best_valid_result"]).startswith("none")  # the command line's report
    assert "recall@20: " in format_metrics(run["test_result"])
