"""GUIDER with any student: every model, plain and under GUIDER, without and with injected noise.

    python benchmarks/guider_any_student.py                       # every model, 3 seeds
    python benchmarks/guider_any_student.py --models DRAGON VBPR --set epochs=30 --jobs 1

For each model (default: RecBole's BPR and LightGCN, then every model of the plugin), noise
ratio (``--noise``, default 0 and 0.1: that share of the train split added as random user-item
pairs; valid and test untouched), method (``plain``: the packaged defaults; ``GUIDER``: the
same with ``guider: true`` and GUIDER's packaged defaults, nothing set per model) and seed,
one run in its own process on one CPU thread (``benchmarks/zoo.py``'s ``run_once``), ``--jobs``
at a time. Test Recall@20 is at the best valid epoch. Every run is appended to
``results/guider_any_student_<dataset>.jsonl`` as it finishes; a rerun skips the runs already
there (same model, noise, method, seed and ``--set`` overrides), so an interrupted command
resumes; the markdown beside it is rewritten after every run: per model and noise, valid and
test Recall@20 of plain and GUIDER (mean ± std over the seeds) and GUIDER - plain. A model that
trains nothing (ItemKNNCBF: its scores come from the features directly) has nothing to distil
into, and ``guider: true`` refuses it with a ConfigError: its rows hold the plain runs only.
"""
import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from zoo import (default_models, load_records, machine_line, mean_std, models_in_table, page_command,  # noqa: E402
                 parse_overrides, run_once, write_page)

from recbole_mm.utils import get_model, trains  # noqa: E402

METHODS = {"plain": {}, "GUIDER": {"guider": True}}
NOT_DISTILLED = "n/a (trains nothing)"


def distils_into(model):
    """Whether GUIDER can train ``model`` as its student (it refuses models that train nothing)."""
    return trains(get_model(model))


def job_key(model, noise, method, seed, overrides):
    return model, float(noise), method, seed, json.dumps(overrides, sort_keys=True)


def record_key(record):
    return job_key(record["model"], record["noise"], record["method"], record["seed"], record["extra"])


def run_job(model, dataset, noise, method, seed, data_path, overrides):
    """One run (zoo's ``run_once`` in its own log folder); returns its record."""
    workdir = os.path.join(REPO, "log", "guider_any_student", f"{method}-{noise:g}")
    os.makedirs(workdir, exist_ok=True)
    config = {**overrides, "noise_ratio": noise, **METHODS[method]}
    record = run_once(model, dataset, seed, data_path, workdir, config)
    record.update(noise=float(noise), method=method, extra=overrides)
    return record


def kept_cell(guider_runs):
    """On how many seeds the fallback kept GUIDER's run (not the student alone), e.g. ``2/3``;
    ``-`` for runs recorded without it."""
    known = [r["fallback"]["kept"] for r in guider_runs if r.get("fallback")]
    return f"{known.count('guider')}/{len(known)}" if known else "-"


def retry_cell(guider_runs):
    """On how many seeds GUIDER trained again with a stronger pull (``guider_kd_retry``: the
    student trailed its teacher all run long) and, in brackets, on how many of those the second
    run was the better on valid, e.g. ``3/3 (2)``."""
    if not guider_runs:
        return "-"
    retried = [r["retry"] for r in guider_runs if r.get("retry")]
    return f"{len(retried)}/{len(guider_runs)} ({sum(entry['kept'] == 'retry' for entry in retried)})"


def table(records, models, noises):
    head = ["model", "noise", "seeds", "plain valid R@20", "GUIDER valid R@20", "plain test R@20",
            "GUIDER test R@20", "GUIDER - plain (test)", "retried (kept)", "GUIDER's run kept",
            "s / run plain, GUIDER"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        for noise in noises:
            runs = {method: [r for r in records if r["model"] == model and r["noise"] == noise
                             and r["method"] == method and r["status"] == "ok"] for method in METHODS}
            if not any(runs.values()):
                continue
            distilled = distils_into(model)
            test = {m: [r["test_recall@20"] for r in runs[m]] for m in METHODS}
            diff = (f"{np.mean(test['GUIDER']) - np.mean(test['plain']):+.4f}" if all(test.values()) else "-")
            seeds = "/".join(str(len(runs[m])) if m == "plain" or distilled else "-" for m in METHODS)
            seconds = ", ".join(f"{np.mean([r['seconds'] for r in runs[m]]):.0f}" if runs[m] else "-" for m in METHODS)
            guider_valid, guider_test = ((mean_std([r["valid_recall@20"] for r in runs["GUIDER"]]),
                                          mean_std(test["GUIDER"])) if distilled else (NOT_DISTILLED, NOT_DISTILLED))
            lines.append("| " + " | ".join([
                model, f"{noise:g}", seeds, mean_std([r["valid_recall@20"] for r in runs["plain"]]), guider_valid,
                mean_std(test["plain"]), guider_test, diff, retry_cell(runs["GUIDER"]), kept_cell(runs["GUIDER"]),
                seconds]) + " |")
    failed = [f"{r['model']} {r['method']} noise {r['noise']:g} seed {r['seed']}: {r['status']}"
              for r in records if r["status"] != "ok" and (r["method"] == "plain" or distils_into(r["model"]))]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {line}" for line in failed]
    return "\n".join(lines)


def runs_missing(records, models):
    """``model`` or ``model (GUIDER)`` for each model whose plain runs, or GUIDER runs, the
    records lack entirely (a model that trains nothing has no GUIDER runs to lack)."""
    missing = []
    for model in models:
        methods = [m for m in METHODS if m == "plain" or distils_into(model)]
        lacking = [m for m in methods if not any(r["model"] == model and r["method"] == m and r["status"] == "ok"
                                                 for r in records)]
        if lacking:
            missing.append(model if len(lacking) == len(methods) else f"{model} ({', '.join(lacking)})")
    return missing


def plain_runs_not_replayed(records, digits=4):
    """The plain runs that their GUIDER twin's fallback did not reproduce, one line each.

    The fallback trains the student alone replaying the plain run's random draws, and records
    that run's best valid Recall@20 (``fallback.plain``); under the same code it equals the plain
    run's to the digit. A plain run that differs was recorded under code that has changed since
    (a stale row): re-run it with ``--methods plain`` after removing it from the .jsonl."""
    plain = {(r["model"], r["noise"], r["seed"]): r["valid_recall@20"] for r in records
             if r["method"] == "plain" and r["status"] == "ok"}
    lines = []
    for r in records:
        alone = (r.get("fallback") or {}).get("plain") if r["method"] == "GUIDER" and r["status"] == "ok" else None
        recorded = plain.get((r["model"], r["noise"], r["seed"]))
        if alone is not None and recorded is not None and round(alone, digits) != round(recorded, digits):
            lines.append(f"{r['model']} noise {r['noise']:g} seed {r['seed']}: plain valid R@20 {recorded:.{digits}f}, "
                         f"the fallback's run alone {alone:.{digits}f}")
    return sorted(lines)


def write_markdown(path, records, models, noises, command, overrides):
    budget = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the dataset's budget (60 epochs, patience 10)"
    header = ("Each model with its packaged defaults (plain) and with `guider: true` and GUIDER's packaged "
              "defaults (nothing set per model), at each injected-noise ratio (valid and test untouched); test "
              "Recall@20 at the best valid epoch, mean ± std over the seeds (sample std); one CPU thread per run. "
              f"Overrides for every run: {budget}.\n\nGUIDER's packaged defaults include its retry and its "
              "fallback. Retry (`guider_kd_retry`): when the student's best valid score stayed below its "
              "teacher's at every evaluation, GUIDER trains again from the same start with the KD weight starting "
              "at 10 instead of 1, and the run with the better best valid score goes on; the column \"retried "
              "(kept)\" counts the seeds where it ran and, in brackets, where the second run was kept. Fallback "
              "(`guider_fallback`): then the student trains alone, replaying the plain run's random draws (so that "
              "run is the plain run), and GUIDER's run is kept only when it beats the run alone on valid by more "
              "than 2 standard errors of the per-user difference (`guider_fallback_z`); the column \"GUIDER's "
              "run kept\" counts the seeds where it was. A GUIDER run costs GUIDER (twice when retried) plus one "
              "plain run (the seconds column). A model that trains nothing (ItemKNNCBF) has no student "
              f"to distil into: `guider: true` refuses it, and its GUIDER cells read {NOT_DISTILLED}.\n\n"
              f"Command: `{command}`\n\n{machine_line()} "
              "Runs shared the CPUs with other jobs: the seconds are indicative only.")
    models = models_in_table(models, records)
    body = table(records, models, noises)
    stale = plain_runs_not_replayed(records)
    if stale:
        body += ("\n\nPlain runs that the fallback's run alone (the same draws, today's code) does not reproduce: "
                 "recorded under older code, re-run them (remove them from the .jsonl, then `--methods plain`):\n\n"
                 + "\n".join(f"- {line}" for line in stale))
    write_page(path, "GUIDER with any student: plain vs GUIDER, bundled synthetic dataset", header,
               body, models, records, missing=runs_missing(records, models))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="default: BPR, LightGCN and every plugin model")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, every run")
    parser.add_argument("--out", default=None, help="markdown file (default results/guider_any_student_<dataset>.md)")
    parser.add_argument("--summarise-only", action="store_true", help="rewrite the page from the .jsonl, run nothing")
    args = parser.parse_args(argv)
    models = args.models or default_models()
    overrides = parse_overrides(args.set)
    out = args.out or os.path.join(REPO, "results", f"guider_any_student_{args.dataset}.md")
    jsonl = os.path.splitext(out)[0] + ".jsonl"
    records = load_records(jsonl)
    done = {record_key(r) for r in records if r["status"] == "ok"}
    jobs = [] if args.summarise_only else [
        (model, noise, method, seed) for model in models for noise in args.noise for method in args.methods
        for seed in args.seeds if job_key(model, noise, method, seed, overrides) not in done
        and (method == "plain" or distils_into(model))]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    command = page_command("guider_any_student.py", argv if argv is not None else sys.argv[1:],
                           models_in_table(models, records), default_models())
    if jobs:  # the dataset is generated once, before runs race to create it
        os.makedirs(os.path.join(REPO, "log", "guider_any_student"), exist_ok=True)
        run_once("BPR", args.dataset, args.seeds[0], args.data_path,
                 os.path.join(REPO, "log", "guider_any_student"), {"epochs": 0})

    def one(job):
        model, noise, method, seed = job
        return run_job(model, args.dataset, noise, method, seed, args.data_path, overrides)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for record in pool.map(one, jobs):
            print(json.dumps(record), flush=True)
            records = [r for r in records if not (record_key(r) == record_key(record) and r["status"] != "ok")]
            records.append(record)
            with open(jsonl, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            current = [r for r in records if r["dataset"] == args.dataset
                       and json.dumps(r["extra"], sort_keys=True) == json.dumps(overrides, sort_keys=True)]
            write_markdown(out, current, models, args.noise, command, overrides)
    records = [r for r in load_records(jsonl) if r["dataset"] == args.dataset
               and json.dumps(r["extra"], sort_keys=True) == json.dumps(overrides, sort_keys=True)]
    ok = {record_key(r) for r in records if r["status"] == "ok"}  # a failed run that a later one redid is dropped
    records = [r for r in records if r["status"] == "ok" or record_key(r) not in ok]
    write_markdown(out, records, models, args.noise, command, overrides)  # also every record another invocation wrote


if __name__ == "__main__":
    main()
