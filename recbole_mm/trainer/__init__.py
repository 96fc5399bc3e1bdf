"""Trainers: ``MultiModalTrainer`` for general models."""
from recbole_mm.trainer.trainer import MultiModalTrainer

__all__ = ["MultiModalTrainer"]
