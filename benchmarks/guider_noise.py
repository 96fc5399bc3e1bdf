"""GUIDER against the plain student and the denoising baselines, over seeds.

    python benchmarks/guider_noise.py --dataset synthetic --epochs 40 --models VBPR FREEDOM \
        --noise 0 0.1 0.2 --methods plain GUIDER --seeds 2020 2021 2022

For each student, noise ratio (that share of the train split added as random user-item
pairs; valid and test untouched; 0 = the paper's Table 2 protocol, natural noise only),
method and seed, one run with the packaged defaults. Every run is appended to
``<out>/guider_noise_<dataset>.jsonl`` as it finishes (a rerun skips the runs already
there), and ``<out>/guider_noise_<dataset>.md`` gets, per (student, noise, method), the mean ±
std over the seeds of valid / test Recall and NDCG @5 and @20; for the GUIDER variants also
the share of train interactions in I_false at the last calibration with its precision and
recall on the injected pairs, and the teacher's test Recall@20 at the end of training; and
the recovery (R_method - R_noisy) / (R_clean - R_noisy) of test Recall@20 at each noise
level, R_clean being the plain student without injected noise. Each record also keeps the mean
seconds per training epoch (a GUIDER epoch: teacher epoch + calibration + distilling student
epoch), and the table gives it as a multiple of the plain student's epoch.

On a real interaction graph with generated features (the paper's Table 2 students at 10%
injected noise; two processes at a time, one thread each, a fixed epoch budget):

    OMP_NUM_THREADS=1 python benchmarks/guider_noise.py --dataset sports --data-path <scratch folder> \
        --inter ../shared/data/interactions/sports.inter --epochs 10 --noise 0.1 --seeds 2020 \
        --models VBPR MGCN --methods plain GUIDER GUIDER-DBPR BOD
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np
import yaml
from ablation_table import REPO

METHODS = {
    "plain": {},
    "T-CE": {"denoise": "tce"},
    "R-CE": {"denoise": "rce"},
    "WBPR": {"denoise": "wbpr"},
    "BOD": {"denoise": "bod"},
    "DA-MRS": {"denoise": "damrs"},
    # GUIDER's own result: the fallback to the student alone (on by default) would hide it
    "GUIDER-DBPR": {"guider": True, "guider_dbpr": False, "guider_eval_teacher": True, "guider_fallback": False},
    "GUIDER": {"guider": True, "guider_eval_teacher": True, "guider_fallback": False},
    # the paper's DBPR term on (packaged: guider_dbpr_weight 0), at the two weights of the search
    "GUIDER+DBPR0.1": {"guider": True, "guider_eval_teacher": True, "guider_fallback": False,
                       "guider_dbpr_weight": 0.1},
    "GUIDER+DBPR1": {"guider": True, "guider_eval_teacher": True, "guider_fallback": False,
                     "guider_dbpr_weight": 1.0},
}
METRICS = ("recall@5", "ndcg@5", "recall@20", "ndcg@20")


@contextlib.contextmanager
def timed_epochs():
    """Seconds of every training epoch of the runs inside (a list it yields): the outermost
    ``_train_epoch`` call of the trainer, so a GUIDER epoch counts its teacher epoch,
    calibration and distilling student epoch, and a plain epoch only the student's."""
    from recbole_mm.trainer.trainer import MultiModalTrainer

    seconds, depth, original = [], [0], MultiModalTrainer._train_epoch

    def timed(self, *args, **kwargs):
        depth[0] += 1
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            depth[0] -= 1
            if not depth[0]:
                seconds.append(time.perf_counter() - start)

    MultiModalTrainer._train_epoch = timed
    try:
        yield seconds
    finally:
        MultiModalTrainer._train_epoch = original


def run_one(model, dataset, noise, method, seed, args, switches=None):
    """One run of ``model`` with the switches of ``method`` (or ``switches``); returns its record."""
    from recbole_mm.quick_start import run_recbole_mm

    start = time.perf_counter()
    with timed_epochs() as epoch_seconds:
        result = run_recbole_mm(model, dataset, None, config_dict={
            "state": "WARNING", "epochs": args.epochs, "data_path": args.data_path, "seed": seed,
            "checkpoint_dir": os.path.join(args.out, "saved", str(os.getpid())), "noise_ratio": noise,
            **(METHODS[method] if switches is None else switches), **args.overrides})
    os.remove(result["saved_model_file"])
    trainer = result["trainer"]
    record = {"model": model, "noise": noise, "method": method, "seed": seed,
              "valid": {m: result["best_valid_result"][m] for m in METRICS},
              "test": {m: result["test_result"][m] for m in METRICS},
              "seconds": time.perf_counter() - start,
              "epochs_run": len(epoch_seconds), "epoch_seconds": float(np.mean(epoch_seconds)),
              "threads": torch_threads()}
    if args.overrides:
        record["overrides"] = args.overrides
    if getattr(trainer, "teacher_epochs", None) is not None:
        record["teacher_epochs"] = trainer.teacher_epochs
    calibrations = getattr(trainer, "calibration_history", None)
    if calibrations:
        last = calibrations[-1]
        record["false_share"] = last["false"] / last["interactions"]
        record["precision"], record["recall"] = last.get("precision"), last.get("recall")
        record["injection_rate"] = last["injected"] / last["interactions"] if "injected" in last else None
    if getattr(trainer, "teacher_results", None):
        record["teacher_test_recall@20"] = trainer.teacher_results[-1]["recall@20"]
    return record


def torch_threads():
    import torch

    return torch.get_num_threads()


def parse_overrides(items):
    """``KEY=VALUE`` strings -> dict, each value read as yaml (``~``: None, ``true``, ``0.1``)."""
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def run_key(model, noise, method, seed, overrides):
    """What makes a run the same run: a rerun with the same key is skipped."""
    return model, noise, method, seed, json.dumps(overrides or {}, sort_keys=True)


def run_or_not_applicable(model, dataset, noise, method, seed, args):
    """:func:`run_one`, or, when the student cannot take the method (the config refuses it, e.g.
    BOD's reweighted BPR on BM3, which has no BPR loss), a record saying so, so that the other
    runs go on."""
    from recbole_mm.errors import ConfigError

    try:
        return run_one(model, dataset, noise, method, seed, args)
    except ConfigError as error:
        return {"model": model, "noise": noise, "method": method, "seed": seed,
                "not_applicable": str(error), **({"overrides": args.overrides} if args.overrides else {})}


def load_runs(path):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def epoch_cell(group):
    """Mean seconds per training epoch over the runs that recorded it ('' for older records)."""
    values = [r["epoch_seconds"] for r in group if "epoch_seconds" in r]
    return f"{np.mean(values):.1f}" if values else ""


def epoch_ratio_cell(group, plain_seconds):
    """A method's epoch as a multiple of the plain student's epoch (same student, noise)."""
    values = [r["epoch_seconds"] for r in group if "epoch_seconds" in r]
    if not values or plain_seconds is None or not np.isfinite(plain_seconds):
        return ""
    return f"{np.mean(values) / plain_seconds:.2f}x"


def summarise(runs, title, command, note=None):
    refused = sorted({(r["model"], r["method"], r["not_applicable"]) for r in runs if "not_applicable" in r})
    runs = [r for r in runs if "not_applicable" not in r]
    groups = {}
    for run in runs:
        groups.setdefault((run["model"], run["noise"], run["method"]), []).append(run)
    lines = [f"# {title}\n", "| student | noise | method | seeds | valid R@20 | valid N@20 | test R@5 | test N@5 | "
             "test R@20 | test N@20 | I_false share | precision | recall | teacher test R@20 | s / run | "
             "s / epoch | epoch / plain epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    plain_epoch = {(model, noise): np.mean([r["epoch_seconds"] for r in group if "epoch_seconds" in r] or [np.nan])
                   for (model, noise, method), group in groups.items() if method == "plain"}
    for (model, noise, method), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                 list(METHODS).index(kv[0][2]))):
        cell = lambda split, metric: mean_std([r[split][metric] for r in group])  # noqa: E731
        extra = lambda key: mean_std([r.get(key) for r in group])  # noqa: E731
        lines.append(f"| {model} | {noise:g} | {method} | {len(group)} | {cell('valid', 'recall@20')} | "
                     f"{cell('valid', 'ndcg@20')} | {cell('test', 'recall@5')} | {cell('test', 'ndcg@5')} | "
                     f"{cell('test', 'recall@20')} | {cell('test', 'ndcg@20')} | {extra('false_share')} | "
                     f"{extra('precision')} | {extra('recall')} | {extra('teacher_test_recall@20')} | "
                     f"{np.mean([r['seconds'] for r in group]):.0f} | {epoch_cell(group)} | "
                     f"{epoch_ratio_cell(group, plain_epoch.get((model, noise)))} |")
    lines += ["", "Recovery of test Recall@20, (R_method - R_noisy) / (R_clean - R_noisy), means over seeds:", "",
              "| student | noise | method | recovery |", "|---|---|---|---|"]
    mean_recall = {key: np.mean([r["test"]["recall@20"] for r in group]) for key, group in groups.items()}
    for (model, noise, method), value in sorted(mean_recall.items()):
        clean, noisy = mean_recall.get((model, 0.0, "plain")), mean_recall.get((model, noise, "plain"))
        if noise and method != "plain" and clean is not None and noisy is not None and clean != noisy:
            lines.append(f"| {model} | {noise:g} | {method} | {(value - noisy) / (clean - noisy):.2f} |")
    if refused:
        lines += ["", "Not applicable (the config refuses the combination):", ""]
        lines += [f"- {model} + {method}: {reason}" for model, method, reason in refused]
    lines += ["", f"Command: `{command}`", "",
              "Machine: 2 CPU cores, no GPU, torch 2.13.0+cpu, one run per core (OMP_NUM_THREADS=1). "
              "Test at the best valid epoch; std over seeds (population). The teacher's Recall@20 is "
              "at the end of training. I_false at the last calibration."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--models", nargs="+", default=["VBPR", "FREEDOM"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.1, 0.2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    parser.add_argument("--summarise-only", action="store_true", help="rewrite the table from the jsonl")
    parser.add_argument("--inter", default=None, metavar="FILE",
                        help="an MMRec interaction file (e.g. ../shared/data/interactions/sports.inter): the "
                             "dataset folder <data-path>/<dataset> is made from it with generated 4096-d image "
                             "and 384-d text features (once; kept for later runs)")
    parser.add_argument("--table", default="guider_noise",
                        help="the output's name: <out>/<table>_<dataset>.jsonl and .md")
    parser.add_argument("--note", default=None,
                        help="a paragraph for the page's end (e.g. how loaded the machine was: the seconds depend on it)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (yaml values), e.g. guider_teacher_pretrain_epochs=10")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    args.overrides = parse_overrides(args.set)
    if args.inter:
        from sports_speed import make_sports_folder

        make_sports_folder(args.inter, root=args.data_path, name=args.dataset)
    jsonl = os.path.join(args.out, f"{args.table}_{args.dataset}.jsonl")
    done = {run_key(r["model"], r["noise"], r["method"], r["seed"], r.get("overrides")) for r in load_runs(jsonl)}
    for model in args.models:
        for noise in args.noise:
            for method in args.methods:
                for seed in args.seeds:
                    if args.summarise_only or run_key(model, noise, method, seed, args.overrides) in done:
                        continue
                    record = run_or_not_applicable(model, args.dataset, noise, method, seed, args)
                    with open(jsonl, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
    command = (f"python benchmarks/guider_noise.py --dataset {args.dataset} --epochs {args.epochs}"
               + (f" --table {args.table}" if args.table != "guider_noise" else "")
               + (f" --inter {args.inter}" if args.inter else "")
               + (f" --set {' '.join(args.set)}" if args.set else "")
               + " (runs accumulated from several invocations, see the jsonl)")
    with open(os.path.join(args.out, f"{args.table}_{args.dataset}.md"), "w") as handle:
        handle.write(summarise(load_runs(jsonl), f"GUIDER and the denoising baselines on {args.dataset} "
                               f"(at most {args.epochs} epochs, packaged defaults)", command, args.note))


if __name__ == "__main__":
    main()
