"""Every model of the plugin, one table: accuracy over seeds on the bundled dataset, and speed
and memory on the Amazon Sports graph.

    python benchmarks/zoo.py                                  # results/zoo_synthetic.md
    python benchmarks/zoo.py --sports /path/to/sports.inter   # results/zoo_sports.md

**Bundled dataset** (``--dataset synthetic``): each model (default: every model of the plugin,
with RecBole's BPR and LightGCN as anchors) is trained once per seed (``--seeds``; default
999 1000 1001) with its packaged defaults and the dataset's epoch budget and early stopping
(``synthetic.yaml``: 60 epochs, patience 10 on valid Recall@20), each run in its own process
on one CPU thread, ``--jobs`` runs at a time. The table gives valid and test (at the best valid
epoch) Recall@20 and NDCG@20 as mean ± std over the seeds, the mean seconds per training
epoch and per evaluation (from the run's log), and the process's peak RSS.

**Sports graph** (``--sports``): ``benchmarks/sports_speed.py`` per model in its own process
(real interactions, generated 4096-d image and 384-d text features; one epoch, its first
``--max-batches`` batches timed and extrapolated to the whole epoch, one full-sort evaluation):
seconds per epoch and per evaluation, peak RSS. No accuracy: one epoch says nothing about it.

Runs already in the ``.jsonl`` beside the table (same model, seed, dataset and settings) are
not run again, so an interrupted run resumes; the markdown is rewritten from the ``.jsonl``
after every run.
"""
import argparse
import ast
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from compare_reference import child_env, parse_epoch_log  # noqa: E402

ANCHORS = ["BPR", "LightGCN"]


def default_models():
    """RecBole's BPR and LightGCN, then every model the plugin registers."""
    from recbole_mm.utils import available_models

    return ANCHORS + available_models(plugin=True)


# ----------------------------------------------------------------------------- one run
def run_once(model, dataset, seed, data_path, workdir, overrides):
    """Train ``model`` once in a child process; returns the record (metrics, timings, RSS)."""
    config = {"seed": seed, "data_path": data_path, "checkpoint_dir": os.path.join(workdir, "saved"),
              "state": "INFO", "show_progress": False, **overrides}
    log_path = os.path.join(workdir, f"{model}-{dataset}-{seed}.log")
    start = time.perf_counter()
    with open(log_path, "w") as handle:
        process = subprocess.Popen([sys.executable, os.path.join(HERE, "ours_runner.py"), model, dataset,
                                    json.dumps(config)], cwd=workdir, stdout=handle, stderr=subprocess.STDOUT,
                                   env=child_env())
        _, status, usage = os.wait4(process.pid, 0)
    with open(log_path, errors="replace") as handle:
        text = handle.read()
    log = parse_epoch_log(text)
    results = [json.loads(line[len("RESULT "):]) for line in text.splitlines() if line.startswith("RESULT ")]
    code = os.waitstatus_to_exitcode(status)
    record = {"model": model, "dataset": dataset, "seed": seed, "overrides": overrides,
              "status": "ok" if code == 0 and results else f"exit {code}: {log_path}",
              "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": usage.ru_maxrss / 1024,
              "epochs_run": len(log["train_seconds"]),
              "train_epoch_s": float(np.mean(log["train_seconds"])) if log["train_seconds"] else None,
              "eval_s": float(np.mean(log["eval_seconds"])) if log["eval_seconds"] else None}
    if results:
        for split, key in (("valid", "best_valid_result"), ("test", "test_result")):
            for metric in ("recall@20", "ndcg@20"):
                record[f"{split}_{metric}"] = (results[-1].get(key) or {}).get(metric)
        for name in ("retry", "fallback"):
            if name in results[-1]:
                record[name] = results[-1][name]
    return record


def packaged_modalities(model):
    """The ``modalities`` of a plugin model's yaml (``[]`` for RecBole's models)."""
    import yaml

    path = os.path.join(REPO, "recbole_mm", "properties", "model", f"{model}.yaml")
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return list((yaml.safe_load(handle) or {}).get("modalities") or [])


def run_sports(model, inter, max_batches, overrides):
    """``sports_speed.py`` for one model in a child process; returns the record. A model that
    scores a CLIP embedding (CLIPMLP, NFVLM) also gets the folder's generated CLIP table."""
    settings = overrides
    if "clip" in packaged_modalities(model):
        from sports_speed import CLIP_FILES

        settings = {**CLIP_FILES, **overrides}
    command = [sys.executable, os.path.join(HERE, "sports_speed.py"), "--inter", inter, "--models", model,
               "--epochs", "1", "--skip-knn", "--device", "cpu"]
    if max_batches:
        command += ["--max-batches", str(max_batches)]
    if settings:
        command += ["--set", *(f"{key}={json.dumps(value)}" for key, value in settings.items())]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=child_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith("sports: ")]
    record = {"model": model, "dataset": "sports", "seed": None, "overrides": overrides}
    if done.returncode or not lines:
        return {**record, "status": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    measured = ast.literal_eval(lines[-1][len("sports: "):])
    return {**record, "status": "ok", "train_epoch_s": measured["epoch_s"], "eval_s": measured["full_sort_eval_s"],
            "peak_rss_mb": measured["peak_rss_mb"], "epoch_timing": measured["epoch_timing"],
            "items": measured["items"], "users": measured["users"]}


# ----------------------------------------------------------------------------- the table
def mean_std(values, digits=4):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(records, models, accuracy=True):
    """Markdown rows, one per model in ``models`` order, from the records of that dataset."""
    head = (["model", "seeds", "valid R@20", "valid N@20", "test R@20", "test N@20", "epochs"] if accuracy
            else ["model", "epoch timing"]) + ["s / epoch", "s / evaluation", "peak RSS MB", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        runs = [r for r in records if r["model"] == model]
        if not runs:
            continue
        ok = [r for r in runs if r["status"] == "ok"]
        failed = [r["status"] for r in runs if r["status"] != "ok"]
        cells = [model]
        if accuracy:
            cells += [str(len(ok))] + [mean_std([r.get(k) for r in ok]) for k in
                                       ("valid_recall@20", "valid_ndcg@20", "test_recall@20", "test_ndcg@20")]
            cells.append(mean_std([r.get("epochs_run") for r in ok], 0))
        else:
            cells.append(ok[-1].get("epoch_timing", "-") if ok else "-")
        cells += [mean_std([r.get("train_epoch_s") for r in ok], 2), mean_std([r.get("eval_s") for r in ok], 2),
                  mean_std([r.get("peak_rss_mb") for r in ok], 0), "ok" if not failed else "; ".join(failed)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(path, records, models, command, sports, dataset="synthetic"):
    if sports:
        intro = ("Speed and memory of every model on the Amazon Sports graph (35,598 users, 18,357 items, "
                 "218,409 train rows) with generated features (image 4096-d uniform, text 384-d Gaussian): one "
                 "epoch, its time extrapolated from the first batches where the table says so, one full-sort "
                 "evaluation of the valid split, one CPU thread per run.")
    else:
        intro = (f"The models on the bundled `{dataset}` dataset with their packaged defaults and the dataset's budget "
                 f"(its yaml's epochs unless the command sets them, early stopping after 10 "
                 "evaluations without a better valid Recall@20); test at the best valid epoch; mean ± std over "
                 "the seeds; one CPU thread per run.")
    title = f"Model zoo: {'Sports graph, speed and memory' if sports else f'bundled {dataset} dataset'}"
    models = models_in_table(models, records)
    write_page(path, title, intro + "\n\n" + f"Command: `{command}`" + "\n\n" + machine_line()
               + " Runs that shared the CPUs with other jobs have indicative timings only.",
               table(records, models, accuracy=not sports), models, records)


# ----------------------------------------------------------------------------- shared by the result pages
def machine_line():
    """``Machine: <cpu>, <n> CPUs, Python <v>; written <UTC time>.``"""
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Machine: {machine}; written {stamp}."


def models_in_table(models, records):
    """The command's models, then every other model the records hold: a command for a few models
    rewrites the page without dropping the rows earlier commands wrote."""
    return list(models) + sorted({r["model"] for r in records} - set(models))


def page_command(script, argv, models, everything):
    """The command that regenerates the page: ``argv`` without ``--summarise-only`` (the command
    that would also run what the page lacks), and without its ``--models`` list when the page's
    models are all among ``everything`` (the script's default list), so the command covers them all."""
    argv = [arg for arg in argv if arg != "--summarise-only"]
    if "--models" in argv and set(models) <= set(everything):
        start = argv.index("--models")
        end = next((i for i in range(start + 1, len(argv)) if argv[i].startswith("--")), len(argv))
        argv = argv[:start] + argv[end:]
    return " ".join([f"python benchmarks/{script}", *argv])


def write_page(path, title, header, body, models, records, missing=None):
    """``# title``, the header paragraphs, the table, and what the records still lack (``missing``,
    default: the models without a record); written to a temporary file and moved into place."""
    if missing is None:
        missing = [model for model in models if not any(r["model"] == model for r in records)]
    with open(path + ".tmp", "w") as handle:
        handle.write(f"# {title}\n\n{header}\n\n{body}\n")
        if missing:
            handle.write(f"\nNot run yet: {', '.join(missing)}. The same command resumes: it runs only what "
                         "the .jsonl beside this file lacks.\n")
    os.replace(path + ".tmp", path)


def parse_overrides(items):
    """``KEY=VALUE`` strings -> dict; values that look like numbers, lists, dicts or booleans are
    read as Python literals."""
    return {key: ast.literal_eval(value) if value[:1] in "[{0123456789-.TF" else value
            for key, value in (item.split("=", 1) for item in items)}


def load_records(path):
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="default: BPR, LightGCN and every plugin model")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[999, 1000, 1001])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, every model")
    parser.add_argument("--sports", default=None, metavar="INTER", help="sports.inter: speed and memory there instead")
    parser.add_argument("--max-batches", type=int, default=20, help="--sports: batches timed per epoch (0: all)")
    parser.add_argument("--out", default=None, help="markdown file (default results/zoo_<dataset>.md)")
    parser.add_argument("--summarise-only", action="store_true", help="rewrite the page from the .jsonl, run nothing")
    args = parser.parse_args(argv)
    models = args.models or default_models()
    overrides = parse_overrides(args.set)
    dataset = "sports" if args.sports else args.dataset
    out = args.out or os.path.join(REPO, "results", f"zoo_{dataset}.md")
    jsonl = os.path.splitext(out)[0] + ".jsonl"
    records = load_records(jsonl)
    done = {(r["model"], r["seed"], json.dumps(r["overrides"], sort_keys=True)) for r in records if r["status"] == "ok"}
    seeds = [None] if args.sports else args.seeds
    jobs = [] if args.summarise_only else [(model, seed) for model in models for seed in seeds
                                           if (model, seed, json.dumps(overrides, sort_keys=True)) not in done]
    workdir = os.path.join(REPO, "log", "zoo")
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    command = page_command("zoo.py", argv if argv is not None else sys.argv[1:],
                           models_in_table(models, records), default_models())

    def write_current_page():
        write_markdown(out, [r for r in records if r["dataset"] == dataset], models, command, bool(args.sports),
                       args.dataset)

    def one(job):
        model, seed = job
        if args.sports:
            return run_sports(model, args.sports, args.max_batches, overrides)
        return run_once(model, dataset, seed, args.data_path, workdir, overrides)

    if not args.sports and jobs:  # the dataset is generated once, before runs race to create it
        run_once("BPR", dataset, args.seeds[0], args.data_path, workdir, {"epochs": 0})
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for record in pool.map(one, jobs):
            print(json.dumps(record), flush=True)
            records.append(record)
            with open(jsonl, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            write_current_page()
    if args.summarise_only:
        write_current_page()


if __name__ == "__main__":
    main()
