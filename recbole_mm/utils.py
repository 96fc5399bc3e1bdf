"""Model lookup: the plugin first, then RecBole (trainer lookup: :func:`recbole_mm.trainer.get_trainer`)."""
import importlib
import importlib.util
import os
import pkgutil

import recbole_mm.model as plugin_model_package

from recbole_mm.errors import ConfigError

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)


class UnknownModelError(ConfigError):
    """No model of that name in the plugin or in RecBole; the message lists the available ones."""


def plugin_models():
    """Class name -> class of the plugin's models: exactly the classes that
    ``recbole_mm/model/__init__.py`` imports (its ``__all__``, less the base class)."""
    return {
        name: getattr(plugin_model_package, name)
        for name in plugin_model_package.__all__
        if name != "MultiModalRecommender"
    }


def plugin_model_names():
    """Lower-cased names of the models shipped in ``recbole_mm.model``."""
    return sorted(name.lower() for name in plugin_models())


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
    """The model class named ``model_name`` (any case): the models of ``recbole_mm.model``
    first, then RecBole's general, context-aware, sequential and knowledge-aware models.

    RecBole's own lookup imports its ``exlib_recommender`` package on a miss, which fails with
    an unrelated ``lightgbm``/``xgboost`` ImportError; this lookup never touches it and raises a
    ``ValueError`` that lists what is available instead.
    """
    module_name = model_name.lower()
    for name, model_class in plugin_models().items():
        if name.lower() == module_name:
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


def trains(model):
    """Whether ``model`` (a model class or instance, ours or RecBole's) has anything to train.
    A model whose scores come from the data directly says ``trainable = False`` (ItemKNNCBF):
    it runs one epoch, and GUIDER and the denoisers, which change a training loss, refuse it."""
    return bool(getattr(model, "trainable", True))


def available_models(plugin=True):
    """Class names of the plugin's models (``plugin=True``) or RecBole's (``False``)."""
    if plugin:
        return list(plugin_models())
    return _recbole_model_names()
