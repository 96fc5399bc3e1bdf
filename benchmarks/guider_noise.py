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
level, R_clean being the plain student without injected noise.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
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
}
METRICS = ("recall@5", "ndcg@5", "recall@20", "ndcg@20")


def run_one(model, dataset, noise, method, seed, args, switches=None):
    """One run of ``model`` with the switches of ``method`` (or ``switches``); returns its record."""
    from recbole_mm.quick_start import run_recbole_mm

    start = time.perf_counter()
    result = run_recbole_mm(model, dataset, None, config_dict={
        "state": "WARNING", "epochs": args.epochs, "data_path": args.data_path, "seed": seed,
        "checkpoint_dir": os.path.join(args.out, "saved", str(os.getpid())), "noise_ratio": noise,
        **(METHODS[method] if switches is None else switches)})
    os.remove(result["saved_model_file"])
    trainer = result["trainer"]
    record = {"model": model, "noise": noise, "method": method, "seed": seed,
              "valid": {m: result["best_valid_result"][m] for m in METRICS},
              "test": {m: result["test_result"][m] for m in METRICS},
              "seconds": time.perf_counter() - start}
    calibrations = getattr(trainer, "calibration_history", None)
    if calibrations:
        last = calibrations[-1]
        record["false_share"] = last["false"] / last["interactions"]
        record["precision"], record["recall"] = last.get("precision"), last.get("recall")
        record["injection_rate"] = last["injected"] / last["interactions"] if "injected" in last else None
    if getattr(trainer, "teacher_results", None):
        record["teacher_test_recall@20"] = trainer.teacher_results[-1]["recall@20"]
    return record


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


def summarise(runs, title, command):
    groups = {}
    for run in runs:
        groups.setdefault((run["model"], run["noise"], run["method"]), []).append(run)
    lines = [f"# {title}\n", "| student | noise | method | seeds | valid R@20 | valid N@20 | test R@5 | test N@5 | "
             "test R@20 | test N@20 | I_false share | precision | recall | teacher test R@20 | s / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, noise, method), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                 list(METHODS).index(kv[0][2]))):
        cell = lambda split, metric: mean_std([r[split][metric] for r in group])  # noqa: E731
        extra = lambda key: mean_std([r.get(key) for r in group])  # noqa: E731
        lines.append(f"| {model} | {noise:g} | {method} | {len(group)} | {cell('valid', 'recall@20')} | "
                     f"{cell('valid', 'ndcg@20')} | {cell('test', 'recall@5')} | {cell('test', 'ndcg@5')} | "
                     f"{cell('test', 'recall@20')} | {cell('test', 'ndcg@20')} | {extra('false_share')} | "
                     f"{extra('precision')} | {extra('recall')} | {extra('teacher_test_recall@20')} | "
                     f"{np.mean([r['seconds'] for r in group]):.0f} |")
    lines += ["", "Recovery of test Recall@20, (R_method - R_noisy) / (R_clean - R_noisy), means over seeds:", "",
              "| student | noise | method | recovery |", "|---|---|---|---|"]
    mean_recall = {key: np.mean([r["test"]["recall@20"] for r in group]) for key, group in groups.items()}
    for (model, noise, method), value in sorted(mean_recall.items()):
        clean, noisy = mean_recall.get((model, 0.0, "plain")), mean_recall.get((model, noise, "plain"))
        if noise and method != "plain" and clean is not None and noisy is not None and clean != noisy:
            lines.append(f"| {model} | {noise:g} | {method} | {(value - noisy) / (clean - noisy):.2f} |")
    lines += ["", f"Command: `{command}`", "",
              "Machine: 2 CPU cores, no GPU, torch 2.13.0+cpu, one run per core (OMP_NUM_THREADS=1). "
              "Test at the best valid epoch; std over seeds (population). The teacher's Recall@20 is "
              "at the end of training. I_false at the last calibration."]
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
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    jsonl = os.path.join(args.out, f"guider_noise_{args.dataset}.jsonl")
    done = {(r["model"], r["noise"], r["method"], r["seed"]) for r in load_runs(jsonl)}
    for model in args.models:
        for noise in args.noise:
            for method in args.methods:
                for seed in args.seeds:
                    if args.summarise_only or (model, noise, method, seed) in done:
                        continue
                    record = run_one(model, args.dataset, noise, method, seed, args)
                    with open(jsonl, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
    command = (f"python benchmarks/guider_noise.py --dataset {args.dataset} --epochs {args.epochs} "
               "(runs accumulated from several invocations, see the jsonl)")
    with open(os.path.join(args.out, f"guider_noise_{args.dataset}.md"), "w") as handle:
        handle.write(summarise(load_runs(jsonl), f"GUIDER and the denoising baselines on {args.dataset} "
                               f"(at most {args.epochs} epochs, packaged defaults)", command))


if __name__ == "__main__":
    main()
