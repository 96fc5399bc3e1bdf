"""One run, and what is built from runs: train and evaluate (:func:`run_recbole_mm`), one trial
of a search (:func:`objective_function`), an in-process grid (:func:`run_grid`), reload a saved
run (:func:`load_data_and_model`). Users import these from :mod:`recbole_mm.quick_start`, the
entry points' floor, which re-exports them; the search (:mod:`recbole_mm.hyper`) and the
launcher (:mod:`recbole_mm.distributed`) sit above this module and call it, and it imports
neither of them.

A run, as data flows: :class:`~recbole_mm.config.Config` → :func:`~recbole_mm.data.create_dataset`
→ :func:`~recbole_mm.data.data_preparation` → :func:`~recbole_mm.utils.get_model` →
:func:`~recbole_mm.trainer.get_trainer` → ``fit`` → ``evaluate`` on the test split.
(``recbole.quick_start`` itself is never imported: it pulls in ray.)

Console and log file: RecBole's ``init_logger`` writes every record to both. Here the config,
dataset and model dumps (some 200 lines) go to the log file only, and the console gets a
one-line summary of the run instead; ``verbose=True`` (``run_recbole_mm.py --verbose``) keeps
RecBole's behaviour. ``state: WARNING`` quiets both, as in RecBole.
"""
import contextlib
import itertools
import logging
import os
import sys
from logging import getLogger

import torch
from recbole.utils import init_logger, init_seed, set_color

from recbole_mm import collectives
from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
from recbole_mm.trainer import get_trainer
from recbole_mm.utils import get_model


FILE_ONLY = {"file_only": True}  # ``logger.info(..., extra=FILE_ONLY)``: the log file, not the console


class _FileOnlyFilter(logging.Filter):
    """Keeps the records logged with ``extra=FILE_ONLY`` off the console."""

    def filter(self, record):
        return not getattr(record, "file_only", False)


_FILE_ONLY_FILTER = _FileOnlyFilter()


def init_logging(config, verbose=False):
    """RecBole's ``init_logger``; unless ``verbose``, the console handler drops the records
    logged with ``extra=FILE_ONLY`` (the log file keeps them)."""
    init_logger(config)
    for handler in getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if verbose:
                handler.removeFilter(_FILE_ONLY_FILTER)
            else:
                handler.addFilter(_FILE_ONLY_FILTER)


def log_file_path():
    """The file the root logger writes to (RecBole's ``log/<model>/...log``), relative to the
    working directory when inside it; ``None`` before :func:`init_logging`."""
    for handler in getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            path = os.path.relpath(handler.baseFilename)
            return handler.baseFilename if path.startswith("..") else path
    return None


class _Holder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def held_log_records():
    """Hold what is logged before the log file exists (the Config's warnings), so that it can be
    replayed into it once :func:`init_logging` has run. On an error the held records are
    released to the console at once (a hint such as a misspelt key may explain the error)."""
    root = getLogger()
    if root.handlers:  # logging already set up: records go straight through
        yield []
        return
    holder = _Holder()
    root.addHandler(holder)
    try:
        yield holder.records
    except BaseException:
        root.removeHandler(holder)
        for record in holder.records:
            root.handle(record)
        raise
    finally:
        root.removeHandler(holder)


def plain_result(result):
    """A metrics mapping with plain Python floats (RecBole's are numpy scalars, whose repr
    ``np.float64(0.1)`` would leak into printed results); ``None`` (nothing evaluated) stays."""
    if result is None:
        return None
    return type(result)((name, float(value)) for name, value in result.items())


def run_summary(config, dataset, loaders, model):
    """One line for the console: model, data, split, modalities and parameter count."""
    sizes = "/".join(str(loader._dataset.inter_num) for loader in loaders)
    split = config["eval_args"]["split"]
    how = "fixed x_label split" if "x_label" in split else f"split {split}"
    if config["cold_start_items"]:
        how = f"item cold-start split {config['cold_start_items']}"
    features = getattr(dataset, "modality_features", {}) or {}
    used = getattr(model, "modality_features", None)
    names = list(used) if isinstance(used, dict) else list(features)
    modalities = ", ".join(f"{name} ({features[name].shape[1]}-d)" for name in names if name in features)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"{config['model']} on {config['dataset']}: {dataset.user_num - 1} users, {dataset.item_num - 1} items, "
            f"train/valid/test {sizes} interactions ({how}); modalities: {modalities or 'none'}; "
            f"{n_parameters} trainable parameters")


def _build(config):
    """Dataset, split loaders and model for a config (seeded as RecBole does, by the global rank
    where RecBole adds the local one: ranks of two machines draw different negatives). On a
    distributed run local rank 0 builds first (dataset files, graph caches), the other ranks then."""
    with collectives.local_rank_zero_first(config):
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"] + collectives.global_rank(config), config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    return dataset, (train_data, valid_data, test_data), model


def _trainer(config, model):
    return get_trainer(config["MODEL_TYPE"], config["model"], guider=bool(config["guider"]))(config, model)


def run_recbole_mm(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, verbose=False):
    """Train ``model`` on ``dataset`` and evaluate it on the test split.

    Args:
        model (str): model name (a recbole_mm model or any RecBole model).
        dataset (str): dataset name (folder ``<data_path>/<dataset>``).
        config_file_list (list of str): yaml files, e.g. ``["properties/guider.yaml"]``.
        config_dict (dict): parameters that override the files.
        saved (bool): save the best checkpoint and evaluate the test split with it.
        verbose (bool): also print the config, dataset and model dumps on the console (they
            always go to the log file).

    Returns:
        dict with ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result`` and
        ``test_result`` (plain floats), as ``recbole.quick_start.run_recbole`` returns, plus
        ``saved_model_file``, ``log_file`` and ``trainer`` (its histories, e.g. GUIDER's
        calibrations).
    """
    with held_log_records() as held:
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logging(config, verbose)
    logger = getLogger()
    for record in held:
        logger.handle(record)
    logger.info(sys.argv, extra=FILE_ONLY)
    logger.info(config, extra=FILE_ONLY)
    if log_file_path():
        logger.info(f"log file: {log_file_path()}")

    dataset, loaders, model = _build(config)
    train_data, valid_data, test_data = loaders
    logger.info(dataset, extra=FILE_ONLY)
    logger.info(model, extra=FILE_ONLY)
    logger.info(set_color(run_summary(config, dataset, loaders, model), "blue"))
    trainer = _trainer(config, model)

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    best_valid_result, test_result = plain_result(best_valid_result), plain_result(test_result)

    logger.info(set_color("best valid ", "yellow") + f": {dict(best_valid_result or {})}")
    logger.info(set_color("test result", "yellow") + f": {dict(test_result or {})}")
    return {
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "log_file": log_file_path(),
        "trainer": trainer,
    }


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """One trial of a hyper-parameter search (RecBole's ``HyperTuning`` calls it).

    Returns:
        dict with ``model``, ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``
        and ``test_result``.
    """
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    _, (train_data, valid_data, test_data), model = _build(config)
    trainer = _trainer(config, model)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": plain_result(best_valid_result),
        "test_result": plain_result(test_result),
    }


def grid_configs(hyper_parameters):
    """The Cartesian product of a ``hyper_parameters`` mapping (name -> list of values).

    Returns:
        list of dicts, one per combination, in the order the lists give.
    """
    names = list(hyper_parameters or {})
    values = [hyper_parameters[name] for name in names]
    return [dict(zip(names, combination)) for combination in itertools.product(*values)]


def run_grid(model, dataset, config_file_list=None, config_dict=None, hyper_parameters=None):
    """Grid search over the model yaml's ``hyper_parameters`` (or the given mapping).

    Unlike MMRec's runner, which picks the combination with the best *test* score, the best
    combination here is the one with the best *valid* score; both are returned for each trial.

    Returns:
        (best, trials): ``best`` is the winning trial; each trial is ``{"params": ..., **result}``.
    """
    if hyper_parameters is None:
        hyper_parameters = Config(model, dataset, config_file_list, config_dict)["hyper_parameters"]
    trials = []
    for params in grid_configs(hyper_parameters):
        result = run_recbole_mm(
            model, dataset, config_file_list, {**(config_dict or {}), **params}, saved=True
        )
        result.pop("trainer")  # keep the trials light: a grid would otherwise hold every model
        trials.append({"params": params, **result})
    sign = 1 if trials and trials[0]["valid_score_bigger"] else -1
    best = max(trials, key=lambda trial: sign * trial["best_valid_score"]) if trials else None
    return best, trials


def load_data_and_model(model_file):
    """Restore a saved run: its config, model (with the saved weights), dataset and loaders.

    Evaluating ``test_data`` with the returned model gives the test metrics of the run.

    Returns:
        (config, model, dataset, train_data, valid_data, test_data)
    """
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    config = collectives.single_process_config(checkpoint["config"])  # saved by a distributed run
    init_logger(config)
    dataset, (train_data, valid_data, test_data), model = _build(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    return config, model, dataset, train_data, valid_data, test_data
