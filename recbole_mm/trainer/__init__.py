"""Trainers: ``MultiModalTrainer`` for general models, ``GUIDERTrainer`` to train any of them
under GUIDER (``guider: true``), and :func:`get_trainer`, which picks one for a model.

The lookup lives here, above the trainers (as in RecBole-GNN), so that ``recbole_mm.utils``
(model lookup, imported by ``recbole_mm.config``) never imports a trainer."""
import importlib

from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_mm.errors import ConfigError
from recbole_mm.utils import get_model, trains
from recbole_mm.trainer.guider import GUIDERTrainer
from recbole_mm.trainer.trainer import MultiModalTrainer

__all__ = ["GUIDERTrainer", "MultiModalTrainer", "get_trainer"]


def get_trainer(model_type, model_name, guider=False):
    """The trainer class for a model.

    ``guider=True`` (``guider: true`` in the config) gives
    :class:`~recbole_mm.trainer.GUIDERTrainer`, which trains any general model as GUIDER's
    student. Otherwise a ``<Model>Trainer`` in ``recbole_mm.trainer`` comes first; general
    models (ours and RecBole's) get :class:`~recbole_mm.trainer.MultiModalTrainer`, which adds
    the per-epoch model hook and the learning-rate schedule to RecBole's ``Trainer``; other
    model types keep RecBole's.
    """
    plugin_trainers = importlib.import_module("recbole_mm.trainer")
    if guider:
        if model_type != ModelType.GENERAL:
            raise ConfigError(f"guider: true trains general models only; {model_name} is {model_type.name.lower()}")
        if not trains(get_model(model_name)):
            raise ConfigError(f"guider: true distils a teacher into a student that trains; {model_name} trains "
                              "nothing (its scores come from the data directly)")
        return plugin_trainers.GUIDERTrainer
    if hasattr(plugin_trainers, model_name + "Trainer"):
        return getattr(plugin_trainers, model_name + "Trainer")
    if model_type == ModelType.GENERAL:
        return plugin_trainers.MultiModalTrainer
    return recbole_get_trainer(model_type, model_name)
