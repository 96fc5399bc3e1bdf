"""Model and trainer lookup: the plugin first, then RecBole."""
import importlib
import importlib.util
import os
import pkgutil

from recbole.utils import ModelType

from recbole_mm.errors import ConfigError

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)
# files in recbole_mm/model/ that hold shared code, not a model
_NON_MODEL_MODULES = {"abstract_recommender", "layers", "loss"}


class UnknownModelError(ConfigError):
    """No model of that name in the plugin or in RecBole; the message lists the available ones."""


def plugin_model_names():
    """Lower-cased module names of the models shipped in ``recbole_mm.model``."""
    import recbole_mm.model as package

    return sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if info.name not in _NON_MODEL_MODULES
    )


def _recbole_model_names():
    import recbole.model as package

    names = []
    for submodule in _RECBOLE_SUBMODULES:
        folder = os.path.join(package.__path__[0], submodule)
        names += [info.name for info in pkgutil.iter_modules([folder])]
    return sorted(names)


def _class_in_module(module, model_name):
    """The class named ``model_name`` in ``module``, matched case-insensitively."""
    for attr in dir(module):
        if attr.lower() == model_name.lower() and isinstance(getattr(module, attr), type):
            return getattr(module, attr)
    return None


def get_model(model_name):
    """The model class named ``model_name``: ``recbole_mm.model.<name>`` first, then RecBole's
    general, context-aware, sequential and knowledge-aware models.

    RecBole's own lookup imports its ``exlib_recommender`` package on a miss, which fails with
    an unrelated ``lightgbm``/``xgboost`` ImportError; this lookup never touches it and raises a
    ``ValueError`` that lists what is available instead.
    """
    module_name = model_name.lower()
    if module_name in plugin_model_names():
        module = importlib.import_module(f"recbole_mm.model.{module_name}")
        model_class = _class_in_module(module, model_name)
        if model_class is not None:
            return model_class
    for submodule in _RECBOLE_SUBMODULES:
        path = f"recbole.model.{submodule}.{module_name}"
        if importlib.util.find_spec(path) is not None:
            model_class = _class_in_module(importlib.import_module(path), model_name)
            if model_class is not None:
                return model_class
    raise UnknownModelError(
        f"Unknown model '{model_name}'. recbole_mm models: {available_models(plugin=True)}; "
        f"RecBole models: {available_models(plugin=False)}"
    )


def available_models(plugin=True):
    """Class names of the plugin's models (``plugin=True``) or RecBole's (``False``)."""
    if plugin:
        names = []
        for module_name in plugin_model_names():
            module = importlib.import_module(f"recbole_mm.model.{module_name}")
            model_class = _class_in_module(module, module_name)
            names.append(model_class.__name__ if model_class else module_name)
        return names
    return _recbole_model_names()


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
        return plugin_trainers.GUIDERTrainer
    if hasattr(plugin_trainers, model_name + "Trainer"):
        return getattr(plugin_trainers, model_name + "Trainer")
    if model_type == ModelType.GENERAL:
        return plugin_trainers.MultiModalTrainer
    from recbole.utils import get_trainer as recbole_get_trainer

    return recbole_get_trainer(model_type, model_name)
