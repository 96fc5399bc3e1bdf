"""LIRDRec's progressive weight copying on a dataset: with and without PWC, the "w/o PWC, users
x 1/3" control, the decay_weight values, and the shared-scorer variant; several seeds.

    python benchmarks/lirdrec_pwc.py --dataset synthetic --epochs 100 --seeds 999 1000 1001

Each run trains with early stopping (patience ``--stopping-step``, valid Recall@20) and tests at
the best valid epoch (its checkpoint, PWC state included). Besides valid / test Recall@20 and
NDCG@20, a row gives the best epoch and, for PWC runs, the attention α of the restored model
(mean over users of max_m α_m: 1/3 is uniform) and the copy weight w1 it scores with.
Appends one JSON line per run to ``<out>/lirdrec_pwc_<dataset>.jsonl`` and rewrites the table
``<out>/lirdrec_pwc_<dataset>.md`` (means over seeds) from all lines of that file.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

VARIANTS = {
    "LIRDRec, decay_weight 0.99": {"decay_weight": 0.99},
    "LIRDRec, decay_weight 0.9": {"decay_weight": 0.9},
    "LIRDRec, decay_weight 0.9, shared scorer": {"decay_weight": 0.9, "pwc_shared_scorer": True},
    "w/o PWC": {"use_pwc": False},
    "w/o PWC, users x 1/3": {"use_pwc": False, "user_scale": 1 / 3},
}


def attention_summary(model):
    """(mean over users of max_m α_m, w1) of a PWC model as evaluation scores it, or (None, None)."""
    if not model.use_pwc:
        return None, None
    model.eval()
    model.use_pwc = False  # the plain branch parts R_u that the attention weighs
    try:
        with torch.no_grad():
            users, _ = model.forward()
            alpha = model.user_attention(torch.chunk(users / model.user_scale, len(model.branch_names), dim=1))
    finally:
        model.use_pwc = True
    return float(alpha.max(dim=1).values.mean()), float(model.copy_weights[0])


def run(label, switches, dataset, data_path, epochs, stopping_step, seed, out_dir):
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    from recbole_mm.quick_start import run_recbole_mm

    start = time.perf_counter()
    result = run_recbole_mm("LIRDRec", dataset, None, config_dict={
        "state": "WARNING", "epochs": epochs, "stopping_step": stopping_step, "seed": seed,
        "data_path": data_path, "checkpoint_dir": os.path.join(out_dir, "saved"), **switches})
    trainer = result["trainer"]
    os.remove(result["saved_model_file"])
    max_alpha, w1 = attention_summary(trainer.model)  # the best checkpoint, restored by evaluate()
    valid, test = result["best_valid_result"], result["test_result"]
    epochs_run = len(trainer.train_loss_dict)
    return {"variant": label, "switches": switches, "seed": seed, "dataset": dataset,
            "valid_recall@20": float(valid["recall@20"]), "valid_ndcg@20": float(valid["ndcg@20"]),
            "test_recall@20": float(test["recall@20"]), "test_ndcg@20": float(test["ndcg@20"]),
            "epochs_run": epochs_run, "best_epoch": epochs_run - trainer.cur_step,
            "max_alpha": max_alpha, "w1": w1, "seconds": time.perf_counter() - start}


def write_table(path, rows, command):
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    mean = lambda group, key: np.mean([r[key] for r in group]) if all(r[key] is not None for r in group) else None  # noqa: E731
    fmt = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    lines = ["| variant | seeds | valid R@20 | valid N@20 | test R@20 | test N@20 | best epoch (1-based) | "
             "mean max α | w1 |", "|---|---|---|---|---|---|---|---|---|"]
    for label, group in by_variant.items():
        lines.append(f"| {label} | {len(group)} | {fmt(mean(group, 'valid_recall@20'), '.4f')} | "
                     f"{fmt(mean(group, 'valid_ndcg@20'), '.4f')} | {fmt(mean(group, 'test_recall@20'), '.4f')} | "
                     f"{fmt(mean(group, 'test_ndcg@20'), '.4f')} | {fmt(mean(group, 'best_epoch'), '.1f')} | "
                     f"{fmt(mean(group, 'max_alpha'), '.3f')} | {fmt(mean(group, 'w1'), '.2e')} |")
    with open(path, "w") as handle:
        handle.write("| variant | seed | valid R@20 | valid N@20 | test R@20 | test N@20 | best epoch (1-based) | epochs run |\n"
                     "|---|---|---|---|---|---|---|---|\n")
        for row in rows:
            handle.write(f"| {row['variant']} | {row['seed']} | {row['valid_recall@20']:.4f} | "
                         f"{row['valid_ndcg@20']:.4f} | {row['test_recall@20']:.4f} | {row['test_ndcg@20']:.4f} | "
                         f"{row['best_epoch']} | {row['epochs_run']} |\n")
        handle.write("\nMeans over seeds:\n\n" + "\n".join(lines) + f"\n\nCommand: `{command}`\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--stopping-step", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[999])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args()
    command = "python benchmarks/lirdrec_pwc.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(1)
    rows_path = os.path.join(args.out, f"lirdrec_pwc_{args.dataset}.jsonl")
    for seed in args.seeds:
        for label in args.variants:
            row = run(label, VARIANTS[label], args.dataset, args.data_path, args.epochs, args.stopping_step, seed,
                      args.out)
            print(json.dumps(row), flush=True)
            with open(rows_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    with open(rows_path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    write_table(os.path.join(args.out, f"lirdrec_pwc_{args.dataset}.md"), rows, command)


if __name__ == "__main__":
    main()
