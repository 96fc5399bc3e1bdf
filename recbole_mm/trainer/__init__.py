"""Trainers: ``MultiModalTrainer`` for general models, ``GUIDERTrainer`` to train any of them
under GUIDER (``guider: true``)."""
from recbole_mm.trainer.guider import GUIDERTrainer
from recbole_mm.trainer.trainer import MultiModalTrainer

__all__ = ["GUIDERTrainer", "MultiModalTrainer"]
