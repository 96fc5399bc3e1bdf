"""Model lookup: the plugin first, then RecBole (trainer lookup: :func:`recbole_mm.trainer.get_trainer`)."""
import importlib
import importlib.util
import os
import pkgutil


_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)
# files in recbole_mm/model/ that hold shared code, not a model
_NON_MODEL_MODULES = {"abstract_recommender", "layers", "loss"}


class UnknownModelError(ValueError):
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
