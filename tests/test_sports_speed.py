"""benchmarks/sports_speed.py: a part of an epoch is timed through the trainer's own epoch."""
import importlib.util
import os
import sys

import pytest

from recbole_mm.model.vbpr import VBPR
from recbole_mm.trainer import GUIDERTrainer
from tests.conftest import build_model

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def sports_speed(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    spec = importlib.util.spec_from_file_location("sports_speed", os.path.join(BENCHMARKS, "sports_speed.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sports_speed", module)
    spec.loader.exec_module(module)
    return module


def test_max_batches_under_guider_times_the_guider_epoch(run_config, sports_speed, monkeypatch):
    """``--max-batches`` with ``guider=true``: the teacher phase and the distilling student run
    on the first batches (it used to time bare ``calculate_loss`` calls: the plain student), and
    the seconds are scaled to the whole loader."""
    config, _, (train, _, _), model = build_model(run_config(guider=True, guider_warmup_epochs=0), VBPR)
    trainer = GUIDERTrainer(config, model)
    losses = []
    original = type(model).calculate_loss
    monkeypatch.setattr(type(model), "calculate_loss", lambda self, batch: losses.append(1) or original(self, batch))
    seconds = sports_speed.part_epoch_seconds(trainer, train, 0, 2)
    assert len(losses) == 2  # the student's two batches
    assert len(trainer.epoch_seconds) == 1 and len(trainer.kd_history) == 1  # GUIDER's epoch, with its KD
    phases = trainer.epoch_seconds[0]
    assert {"teacher", "calibration", "student"} <= set(phases)
    batch_phases = phases["teacher"] + phases["student"]
    assert seconds >= batch_phases * len(train) / 2 * 0.9  # scaled to the loader's batch count
