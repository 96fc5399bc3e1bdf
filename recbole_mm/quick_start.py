"""Entry points with the signatures of ``recbole.quick_start``: train, evaluate, search, reload.

A run, as data flows: :class:`~recbole_mm.config.Config` → :func:`~recbole_mm.data.create_dataset`
→ RecBole's ``data_preparation`` → :func:`~recbole_mm.utils.get_model` →
:func:`~recbole_mm.utils.get_trainer` → ``fit`` → ``evaluate`` on the test split.
(``recbole.quick_start`` itself is never imported: it pulls in ray.)
"""
import itertools
import logging
import sys
from logging import getLogger

import torch
from recbole.utils import init_logger, init_seed, set_color

from recbole_mm import distributed
from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
from recbole_mm.utils import get_model, get_trainer


def _build(config):
    """Dataset, split loaders and model for a config (seeded as RecBole does, by the global rank
    where RecBole adds the local one: ranks of two machines draw different negatives). On a
    distributed run local rank 0 builds first (dataset files, graph caches), the other ranks then."""
    with distributed.local_rank_zero_first(config):
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"] + distributed.global_rank(config), config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    return dataset, (train_data, valid_data, test_data), model


def _trainer(config, model):
    return get_trainer(config["MODEL_TYPE"], config["model"], guider=bool(config["guider"]))(config, model)


def run_recbole_mm(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """Train ``model`` on ``dataset`` and evaluate it on the test split.

    Args:
        model (str): model name (a recbole_mm model or any RecBole model).
        dataset (str): dataset name (folder ``<data_path>/<dataset>``).
        config_file_list (list of str): yaml files, e.g. ``["properties/guider.yaml"]``.
        config_dict (dict): parameters that override the files.
        saved (bool): save the best checkpoint and evaluate the test split with it.

    Returns:
        dict with ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result`` and
        ``test_result``, as ``recbole.quick_start.run_recbole`` returns, plus
        ``saved_model_file`` and ``trainer`` (its histories, e.g. GUIDER's calibrations).
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset, (train_data, valid_data, test_data), model = _build(config)
    logger.info(dataset)
    logger.info(model)
    trainer = _trainer(config, model)

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
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
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
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
    config = distributed.single_process_config(checkpoint["config"])  # saved by a distributed run
    init_logger(config)
    dataset, (train_data, valid_data, test_data), model = _build(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    return config, model, dataset, train_data, valid_data, test_data
