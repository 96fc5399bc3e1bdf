"""Hyper-parameter search: every trial in a process of its own, on a local process pool or a Ray cluster.

A search is a list of *trials*, each a dict of config overrides drawn from

- the model yaml's ``hyper_parameters`` (MMRec's convention: name -> list of values, the
  Cartesian product is searched), or
- a RecBole hyper file (``--params_file``), one parameter a line::

      learning_rate choice [0.01,0.001]
      reg_weight loguniform -8,0          # exp(U(-8, 0)), hyperopt's convention, as RecBole
      dropout uniform 0.1,0.5
      knn_k quniform 5,20,5               # round(U(5, 20) / 5) * 5

  Only ``choice`` lines enumerate a grid; a file with any other kind needs ``samples=N``
  (that many configurations drawn with a seeded generator: a random search).

Each trial trains with RecBole's trainer, early-stopped on the valid metric, and is evaluated
on the test split with its best-valid checkpoint. **The selected trial is the one with the best
valid score** (``valid_metric``, ``valid_metric_bigger``); MMRec's runner selects the
combination with the best *test* score, which leaks the test split into model selection. Every
trial's valid and test metrics, time and parameters are written to
``<results_dir>/<model>_<dataset>.md`` and ``.csv`` (the CSV has every metric at full
precision, the markdown the metrics at the valid metric's cutoff).

Runs are resumable: each finished trial is appended to ``<model>_<dataset>.jsonl`` beside the
tables, keyed by a hash of everything that defines it (model, dataset, config files' contents,
overrides, parameters); a search started again skips the trials already there.

Results are deterministic: every trial gets the config's ``seed`` with ``reproducibility``, runs
alone in a fresh process with ``threads_per_trial`` (default 1) torch/OpenMP threads, so the
same trial gives the same metrics on either backend, in any order, alongside any others.

Backends:

- ``local``: a ``concurrent.futures.ProcessPoolExecutor`` (spawn, one process per trial);
  ``workers`` defaults to the cores (``os.cpu_count() // threads_per_trial``) or, with GPUs, one
  trial per GPU at a time, each given its own device (``gpu_id``, i.e. ``CUDA_VISIBLE_DEVICES``).
- ``ray``: Ray Tune (``pip install "ray[tune]>=2.58,<3"``, see docs/scale.md): one Tune trial per
  configuration, ``cpu=threads_per_trial`` and ``gpu=1`` per trial when the cluster has GPUs,
  placed by Ray over the nodes of the cluster at ``ray_address`` (``ray start --head`` on one
  machine, ``ray start --address=<head>:6379`` on the others), or over a Ray started on this
  machine when no address is given. The journal and the tables are written by the driver.
"""
import ast
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from recbole_mm.errors import ConfigError, RecboleMMError
from recbole_mm.files import atomic_write

BACKENDS = ("local", "ray")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "quniform")
# config keys that do not change what a trial computes: left out of its key
_KEY_EXEMPT = ("checkpoint_dir", "gpu_id", "state", "show_progress")


class HyperFileError(ConfigError):
    """A RecBole hyper file line that cannot be read (the message names the file and line)."""


class SearchSpaceError(ConfigError):
    """A search space that cannot be enumerated as asked (continuous parameters without samples)."""


class RayUnavailableError(RecboleMMError, ImportError):
    """``backend: ray`` without a usable Ray (missing, or older than the search needs)."""


class TrialProcessDiedError(RecboleMMError, RuntimeError):
    """A trial's worker process died; the journal keeps the finished trials for a resume."""


def read_hyper_file(path):
    """Parse a RecBole hyper file into ``{name: (distribution, arguments)}``.

    ``choice`` takes a Python list literal; ``uniform`` and ``loguniform`` ``low,high``;
    ``quniform`` ``low,high,q``. Blank lines and ``#`` comments are skipped.
    """
    space = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 2)
            where = f"{path}:{number}"
            if len(parts) != 3:
                raise HyperFileError(f"{where}: expected 'name distribution values', found {line!r}")
            name, kind, text = parts
            if kind not in DISTRIBUTIONS:
                raise HyperFileError(f"{where}: unknown distribution {kind!r} (one of {', '.join(DISTRIBUTIONS)})")
            try:
                if kind == "choice":
                    values = ast.literal_eval(text)
                    if not isinstance(values, (list, tuple)) or not values:
                        raise ValueError("not a non-empty list")
                    space[name] = ("choice", list(values))
                else:
                    bounds = [float(value) for value in text.split(",")]
                    if len(bounds) != (3 if kind == "quniform" else 2):
                        raise ValueError(f"{len(bounds)} numbers")
                    space[name] = (kind, bounds)
            except (ValueError, SyntaxError) as error:
                raise HyperFileError(f"{where}: cannot read the values of {name} {kind}: {text!r} ({error})") from None
    return space


def grid_space(hyper_parameters):
    """A ``hyper_parameters`` mapping (name -> list of values) as a search space of choices."""
    return {name: ("choice", list(values)) for name, values in (hyper_parameters or {}).items()}


def space_trials(space, samples=None, seed=2020):
    """The trials of a search space, in a fixed order.

    Args:
        space (dict): name -> (distribution, arguments), as :func:`read_hyper_file` returns.
        samples (int or None): ``None``: the Cartesian product of the choices (every
            distribution must be ``choice``); ``N``: N configurations drawn independently
            (uniformly among the choices), from ``numpy.random.default_rng(seed)``.

    Returns:
        list of dicts name -> value.
    """
    from recbole_mm.pipeline import grid_configs

    if samples is None:
        continuous = [name for name, (kind, _) in space.items() if kind != "choice"]
        if continuous:
            raise SearchSpaceError(f"a grid enumerates 'choice' only; {', '.join(continuous)} need samples=N "
                             "(a random search of N seeded draws)")
        return grid_configs({name: values for name, (_, values) in space.items()})
    import numpy as np

    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(int(samples)):
        params = {}
        for name, (kind, args) in space.items():
            if kind == "choice":
                params[name] = args[int(rng.integers(len(args)))]
            elif kind == "uniform":
                params[name] = float(rng.uniform(args[0], args[1]))
            elif kind == "loguniform":
                params[name] = float(math.exp(rng.uniform(args[0], args[1])))
            else:
                low, high, q = args
                params[name] = float(round(rng.uniform(low, high) / q) * q)
        trials.append(params)
    return trials


def _file_digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha1(handle.read()).hexdigest()


def trial_key(model, dataset, config_file_list, config_dict):
    """Hash (12 hex digits) of what defines a trial: model, dataset, the config files' names and
    contents and the overrides (the trial's parameters included), less the keys that only say
    where or how verbosely it runs (``checkpoint_dir``, ``gpu_id``, ``state``, ``show_progress``)."""
    identity = {
        "model": model,
        "dataset": dataset,
        "config_files": [[path, _file_digest(path)] for path in (config_file_list or [])],
        "config": {key: value for key, value in config_dict.items() if key not in _KEY_EXEMPT},
    }
    text = json.dumps(identity, sort_keys=True, default=repr)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


class Journal:
    """Append-only JSON-lines record of finished trials, one line per trial, flushed and synced
    as each finishes. A line cut short by an interruption is ignored when read back."""

    def __init__(self, path):
        self.path = path

    def load(self):
        """``{key: record}`` of the trials that finished (``status == "ok"``); later lines win."""
        records = {}
        if not os.path.isfile(self.path):
            return records
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("status") == "ok" and "key" in record:
                    records[record["key"]] = record
        return records

    def append(self, record):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():  # start on a fresh line after a line cut short
                handle.seek(handle.tell() - 1)
                if handle.read(1) != "\n":
                    handle.write("\n")
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def run_trial(task):
    """Train and test one configuration (in the process that calls it: a pool worker or a Ray
    worker). Never raises: a failure comes back as ``status: "error"`` with the traceback.

    Args:
        task (dict): ``model``, ``dataset``, ``config_file_list``, ``config`` (all overrides,
            the trial's parameters included), ``params``, ``key``, ``cwd``, ``threads`` and
            ``device`` (``gpu_id``: ``""`` for the CPU, ``"3"`` for GPU 3).

    Returns:
        dict: the journal record (``key``, ``params``, ``status``, ``valid``, ``test``,
        ``best_valid_score``, ``valid_score_bigger``, ``seed``, ``time_s``, ``checkpoint_dir``).
    """
    threads = int(task.get("threads") or 1)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if task.get("cwd") and os.path.isdir(task["cwd"]):
        os.chdir(task["cwd"])  # Ray starts trials in their own folders: relative paths are the driver's
    sys.argv = sys.argv[:1]  # RecBole reads --key=value from sys.argv: the overrides are in the task
    record = {"key": task["key"], "params": task["params"], "model": task["model"], "dataset": task["dataset"]}
    start = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(threads)
        import recbole_mm  # noqa: F401  (RecBole compatibility patches)
        from recbole_mm.pipeline import objective_function

        config_dict = {"model": task["model"], "dataset": task["dataset"], **task["config"],
                       "checkpoint_dir": task["checkpoint_dir"]}
        if task.get("device") is not None:
            config_dict["gpu_id"] = task["device"]
        result = objective_function(config_dict=config_dict, config_file_list=task["config_file_list"], saved=True)
        record.update(
            status="ok",
            valid={name: float(value) for name, value in result["best_valid_result"].items()},
            test={name: float(value) for name, value in result["test_result"].items()},
            best_valid_score=float(result["best_valid_score"]),
            valid_score_bigger=bool(result["valid_score_bigger"]),
        )
    except Exception:  # one failing configuration must not end the search
        record.update(status="error", error=traceback.format_exc(limit=-8))
    record.update(
        time_s=round(time.perf_counter() - start, 3),
        seed=task["config"].get("seed", task.get("seed")),
        device=task.get("device") or "cpu",
        pid=os.getpid(),
        checkpoint_dir=task["checkpoint_dir"],
    )
    return record


def visible_gpus():
    """Ids of the GPUs this process may use (``CUDA_VISIBLE_DEVICES`` or all), [] without CUDA."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        count = 0
    if not count:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in visible.split(",") if part.strip()] if visible else []
    return ids[:count] if ids else [str(index) for index in range(count)]


def run_local(tasks, on_done, workers=None, gpus=(), function=run_trial):
    """Run ``function(task)`` (:func:`run_trial`) for each task in a spawn process pool, one
    fresh process per trial (on Python >= 3.11; older ones reuse a worker).

    Each running trial holds a *slot*, passed as ``task["device"]``: a GPU id (the slots are
    ``gpus``, repeated round-robin when ``workers`` exceeds them) or the CPU (``""``); a slot
    is given to the next trial only when its trial has finished. ``on_done(record)`` is called
    in this process as each trial finishes.
    """
    import multiprocessing

    gpus = list(gpus)
    if workers is None:
        workers = len(gpus) if gpus else max(1, (os.cpu_count() or 1) // max(1, int(tasks[0].get("threads") or 1)))
    workers = max(1, min(int(workers), len(tasks)))
    free = [gpus[index % len(gpus)] for index in range(workers)] if gpus else [""] * workers
    extra = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    queue = list(tasks)
    running = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), **extra) as pool:
        while queue or running:
            while queue and free:
                slot, task = free.pop(0), queue.pop(0)
                try:
                    running[pool.submit(function, {**task, "device": slot})] = (slot, task)
                except BrokenProcessPool as error:
                    raise TrialProcessDiedError("a trial's process died (killed, out of memory?); the finished trials "
                                                "are in the journal: run the search again to resume") from error
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                slot, task = running.pop(future)
                free.append(slot)
                try:
                    record = future.result()
                except BrokenProcessPool as error:
                    record = {"key": task["key"], "params": task["params"], "status": "error", "time_s": 0.0,
                              "error": f"the trial's process died (killed, out of memory?): {error!r}"}
                on_done(record)


RAY_REQUIREMENT = "ray[tune]>=2.58,<3"
RAY_MIN_VERSION = (2, 58)


def import_ray():
    """``(ray, ray.tune)``, or an ImportError that says how to install a Ray that works here.

    RecBole 1.2.1 depends on ``ray<=2.6.3``, which does not import on setuptools >= 81
    (``pkg_resources`` is gone) nor run on numpy 2; the backend needs a current Ray installed
    over that pin (``pip install "ray[tune]>=2.58,<3"``; recbole imports ray only in
    ``recbole.quick_start``, which recbole_mm never imports)."""
    hint = f'the ray backend needs a current Ray: pip install "{RAY_REQUIREMENT}"'
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise RayUnavailableError(f"{hint} (import ray: {error})") from error
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if version < RAY_MIN_VERSION:
        raise RayUnavailableError(f"{hint} (found ray {ray.__version__})")
    return ray, tune


def _ray_trainable(spec):
    """A Ray Tune function trainable: one trial, its record reported once as JSON."""
    from ray import tune

    task = dict(spec["task"])
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs ("" for none); RecBole's Config would
    # overwrite it with gpu_id, so gpu_id must be the same ids
    task["device"] = os.environ.get("CUDA_VISIBLE_DEVICES", "") if task.get("gpu") else ""
    record = run_trial(task)
    tune.report({"record": json.dumps(record), "ok": record["status"] == "ok"})


def run_ray(tasks, on_done, workers=None, address=None, num_cpus=None, use_gpu=True, storage_path=None, name="hyper"):
    """Run ``tasks`` as the trials of a Ray Tune grid (:func:`run_trial` in Ray workers).

    Args:
        address: a running cluster (``"auto"``, ``"<head>:6379"``), or ``None`` to start Ray on
            this machine with ``num_cpus`` CPUs (default: all).
        workers: cap on concurrent trials (default: as many as the cluster's resources fit).
        storage_path: folder of Ray Tune's own experiment files (absolute path).

    ``on_done(record)`` is called by a Tune callback in this (driver) process as each trial
    reports, so the journal is written here even when the trials run on other machines.
    """
    ray, tune = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        gpu = 1 if use_gpu and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        threads = int(tasks[0].get("threads") or 1)
        trainable = tune.with_resources(_ray_trainable, {"cpu": threads, "gpu": gpu})

        class JournalCallback(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                on_done(json.loads(result["record"]))

        tuner = tune.Tuner(
            trainable,
            param_space={"task": tune.grid_search([{**task, "gpu": gpu} for task in tasks])},
            tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=False),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=[JournalCallback()],
                                      verbose=0),
        )
        tuner.fit()
    finally:
        if started:
            ray.shutdown()


def select_best(records):
    """The finished record with the best valid score (``valid_metric_bigger``), or ``None``;
    ties go to the earlier trial."""
    finished = [record for record in records if record.get("status") == "ok"]
    if not finished:
        return None
    sign = 1.0 if finished[0]["valid_score_bigger"] else -1.0
    return max(finished, key=lambda record: sign * record["best_valid_score"])


def _format(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def write_tables(records, best, stem, valid_metric, title):
    """``<stem>.csv`` (every metric, full precision) and ``<stem>.md`` (metrics at the valid
    metric's cutoff), one row per trial in search order; the selected trial is marked."""
    names = []
    for record in records:
        names += [name for name in record["params"] if name not in names]
    valid_names, test_names = [], []
    for record in records:  # RecBole's order: metrics x cutoffs
        valid_names += [name for name in record.get("valid", {}) if name not in valid_names]
        test_names += [name for name in record.get("test", {}) if name not in test_names]
    best_key = best["key"] if best else None

    header = (["trial", "key", "status", "selected"] + names + ["seed"]
              + [f"valid_{name}" for name in valid_names] + [f"test_{name}" for name in test_names] + ["time_s"])
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(header)
    for record in records:
        writer.writerow(
            [record.get("trial", ""), record["key"], record["status"], int(record["key"] == best_key)]
            + [json.dumps(record["params"].get(name)) for name in names] + [record.get("seed")]
            + [repr(record.get("valid", {}).get(name, "")) if name in record.get("valid", {}) else ""
               for name in valid_names]
            + [repr(record.get("test", {}).get(name, "")) if name in record.get("test", {}) else ""
               for name in test_names]
            + [record.get("time_s")]
        )
    # rewritten after every trial: never leave a half-written table behind an interruption
    atomic_write(stem + ".csv", lambda stream: stream.write(table.getvalue().encode("utf-8")))

    cutoff = valid_metric.lower().split("@")[1] if "@" in valid_metric else None
    shown = [name for name in test_names if "@" not in name or name.split("@")[1] == cutoff]
    lines = [f"# {title}", ""]
    if best:
        lines.append(f"Selected on **valid {valid_metric.lower()}** (MMRec selects on test): trial "
                     f"{best.get('trial', '')}, {json.dumps(best['params'])}, valid {best['best_valid_score']:.4f}, "
                     f"test {valid_metric.lower()} {best['test'].get(valid_metric.lower(), float('nan')):.4f}.")
    else:
        lines.append("No trial finished.")
    lines += ["", f"Every metric at full precision: `{os.path.basename(stem)}.csv`.", ""]
    columns = (["trial"] + names + [f"valid {name}" for name in shown if name in valid_names]
               + [f"test {name}" for name in shown] + ["time (s)"])
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for record in records:
        index = record.get("trial", "")
        mark = f"**{index}** (selected)" if record["key"] == best_key else str(index)
        cells = [mark] + [_format(record["params"].get(name)) for name in names]
        if record["status"] == "ok":
            cells += [_format(record["valid"][name]) for name in shown if name in valid_names]
            cells += [_format(record["test"][name]) for name in shown]
        else:
            reason = (record.get("error") or "").strip().splitlines()[-1:] or ["failed"]
            cells += [f"failed: {reason[0][:80]}"] + [""] * (len(columns) - len(cells) - 2)
        cells.append(f"{record.get('time_s', 0):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write(stem + ".md", lambda stream: stream.write(text.encode("utf-8")))


def run_hyper(model, dataset, config_file_list=None, config_dict=None, hyper_parameters=None, params_file=None,
              samples=None, backend="local", workers=None, results_dir="results/hyper", name=None,
              threads_per_trial=1, gpus=None, ray_address=None, ray_num_cpus=None):
    """Hyper-parameter search, each trial in a separate process, selected on the valid metric.

    The trials come from ``hyper_parameters`` (name -> list), else ``params_file`` (a RecBole
    hyper file), else the model yaml's ``hyper_parameters``. Selection is on the **valid**
    metric; MMRec's runner selects on the test metric. Trials already in the journal
    ``<results_dir>/<name>.jsonl`` (default name ``<model>_<dataset>``) are not run again.
    The command line is not read here (``run_recbole_mm.py --hyper`` passes its ``--key=value``
    overrides as ``config_dict``), so every override is part of each trial's key.

    Args:
        backend: ``"local"`` (process pool) or ``"ray"`` (Ray Tune; ``ray_address`` of a cluster,
            or ``None`` for a Ray started here with ``ray_num_cpus`` CPUs).
        workers: concurrent trials (default: cores / ``threads_per_trial``, or one per GPU).
        gpus: GPU ids for the local backend (default: a ``gpu_id`` given in the config files or
            dict, else every visible GPU; none without ``use_gpu`` or CUDA); ``[]``: the CPU. Ray
            gives each trial one of the cluster's GPUs itself.

    Returns:
        (best, trials): the journal records of this search in search order (``params``,
        ``valid``, ``test``, ``best_valid_score``, ``time_s``, ...) and the selected one.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")
    from logging import getLogger

    from recbole_mm.config import Config

    config_dict = dict(config_dict or {})
    config_file_list = list(config_file_list or [])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        config = Config(model, dataset, config_file_list, config_dict)
    finally:
        sys.argv = argv
        # RecBole's Config sets CUDA_VISIBLE_DEVICES to gpu_id: give the trials back the GPUs
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible

    if hyper_parameters is not None:
        space = grid_space(hyper_parameters)
    elif params_file is not None:
        space = read_hyper_file(params_file)
    else:
        space = grid_space(config["hyper_parameters"])
    trials = space_trials(space, samples=samples, seed=config["seed"])
    overlap = sorted(set(config_dict) & set(space))
    if overlap:
        getLogger().warning(f"searched parameters override the given values of {', '.join(overlap)}")

    if config["synthetic_generator"]:
        # generated once here, before trials read it concurrently
        from recbole_mm.data.synthetic import ensure_synthetic_dataset

        ensure_synthetic_dataset(config["data_path"], config["dataset"], config["synthetic_generator"])
    elif config["dataset_builder"]:  # built once here too (recbole_mm.prepare)
        from recbole_mm.data.bundled import ensure_bundled_dataset

        ensure_bundled_dataset(config["data_path"], config["dataset"], config["dataset_builder"])

    name = name or f"{model}_{dataset}"
    stem = os.path.join(results_dir, name)
    journal = Journal(stem + ".jsonl")
    checkpoint_root = os.path.abspath(os.path.join(config["checkpoint_dir"], "hyper", name))
    tasks = []
    for params in trials:
        trial_config = {**config_dict, **params}
        key = trial_key(model, dataset, config_file_list, trial_config)
        tasks.append({
            "key": key, "params": params, "model": model, "dataset": dataset,
            "config_file_list": [os.path.abspath(path) for path in config_file_list],
            "config": trial_config, "seed": config["seed"], "threads": threads_per_trial,
            "cwd": os.getcwd(), "checkpoint_dir": os.path.join(checkpoint_root, key),
        })

    finished = journal.load()
    todo = [task for task in tasks if task["key"] not in finished]
    order = {task["key"]: index for index, task in enumerate(tasks)}
    logger = getLogger()
    logger.info(f"hyper search {name}: {len(tasks)} trials, {len(tasks) - len(todo)} already in {journal.path}, "
                f"{len(todo)} to run on {backend}")

    failed = {}

    def current_records():
        """This search's records so far, in search order, each with its ``trial`` number."""
        records = {**failed, **journal.load()}
        return [{**records[task["key"]], "trial": index} for index, task in enumerate(tasks) if task["key"] in records]

    valid_metric = str(config["valid_metric"])
    title = f"{model} on {dataset}: hyper-parameter search ({len(tasks)} trials)"

    def on_done(record):
        if record["key"] not in order:
            return
        journal.append(record)
        if record["status"] == "ok":
            failed.pop(record["key"], None)
            logger.info(f"trial {order[record['key']]} {record['params']}: valid {record['best_valid_score']:.4f} "
                        f"({record['time_s']:.1f} s)")
        else:
            failed[record["key"]] = record
            logger.warning(f"trial {order[record['key']]} {record['params']} failed:\n{record.get('error')}")
        records = current_records()
        write_tables(records, select_best(records), stem, valid_metric, title)

    if todo:
        if backend == "local":
            if gpus is None:
                gpus = visible_gpus() if config["use_gpu"] else []
                if gpus and "gpu_id" in config.external_config_dict:  # the user's gpu_id picks among them
                    gpus = [part.strip() for part in str(config["gpu_id"]).split(",") if part.strip()]
            run_local(todo, on_done, workers=workers, gpus=gpus)
        else:
            storage = os.path.abspath(os.path.join(config["checkpoint_dir"], "ray_tune"))
            run_ray(todo, on_done, workers=workers, address=ray_address, num_cpus=ray_num_cpus,
                    use_gpu=bool(config["use_gpu"]), storage_path=storage, name=name)
    records = current_records()
    best = select_best(records)
    write_tables(records, best, stem, valid_metric, title)
    return best, records


def main(argv=None):
    """``run_recbole_mm.py --hyper``: parse the search flags, pass every other ``--key=value`` on
    as a config override, run :func:`run_hyper` and print the selected trial. Returns the exit
    status (1 when no trial finished)."""
    import argparse

    parser = argparse.ArgumentParser(prog="run_recbole_mm.py --hyper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--hyper", action="store_true")
    parser.add_argument("--model", "-m", default="VBPR")
    parser.add_argument("--dataset", "-d", default="synthetic")
    parser.add_argument("--config_files", default=None, help="config files, separated by spaces")
    parser.add_argument("--params_file", default=None, help="RecBole hyper file (default: the model yaml's grid)")
    parser.add_argument("--samples", type=int, default=None, help="random search: draws from the params_file")
    parser.add_argument("--backend", choices=BACKENDS, default="local")
    parser.add_argument("--workers", type=int, default=None, help="concurrent trials")
    parser.add_argument("--threads_per_trial", type=int, default=1)
    parser.add_argument("--results_dir", default=os.path.join("results", "hyper"))
    parser.add_argument("--name", default=None, help="file stem of the tables and journal")
    parser.add_argument("--ray_address", default=None, help="Ray cluster to join, e.g. auto or <head>:6379")
    parser.add_argument("--ray_num_cpus", type=int, default=None, help="CPUs of a Ray started here")
    args, rest = parser.parse_known_args(argv)
    for flag in ("workers", "threads_per_trial", "samples", "ray_num_cpus"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be an integer >= 1, got {value}")

    overrides = {}
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            parser.error(f"unrecognised argument {arg!r} (overrides are --key=value)")
        key, value = arg[2:].split("=", 1)
        overrides[key] = value
    import recbole_mm  # noqa: F401
    from recbole_mm.config import Config

    from recbole_mm.utils import UnknownModelError

    overrides = Config._convert_config_dict(None, overrides)  # RecBole's own parsing of command-line values
    try:
        best, records = run_hyper(
            args.model, args.dataset, args.config_files.split() if args.config_files else None, overrides,
            params_file=args.params_file, samples=args.samples, backend=args.backend, workers=args.workers,
            results_dir=args.results_dir, name=args.name, threads_per_trial=args.threads_per_trial,
            ray_address=args.ray_address, ray_num_cpus=args.ray_num_cpus,
        )
    except (UnknownModelError, HyperFileError, SearchSpaceError, ImportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stem = os.path.join(args.results_dir, args.name or f"{args.model}_{args.dataset}")
    failed = [record for record in records if record["status"] != "ok"]
    print(f"{len(records) - len(failed)} of {len(records)} trials finished; tables: {stem}.md, {stem}.csv")
    if best is None:
        if failed:
            print(f"error: every trial failed; the first one's error:\n{failed[0].get('error')}", file=sys.stderr)
        return 1
    metrics = "  ".join(f"{name}: {value:.4f}" for name, value in best["test"].items())
    print(f"selected on valid: {json.dumps(best['params'])}  valid score: {best['best_valid_score']:.4f}")
    print(f"test result: {metrics}")
    return 0
