"""Shared by the ablation scripts: train a list of (label, model, switches) variants on one
dataset with ``run_recbole_mm`` and write valid/test Recall@20 and NDCG@20 as a markdown table."""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run_variants(variants, dataset, epochs, data_path, out_dir, config_files=None):
    """Rows (label, valid R@20, valid N@20, test R@20, test N@20, seconds), test at the best
    valid epoch; checkpoints are deleted after each run."""
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    from recbole_mm.quick_start import run_recbole_mm

    rows = []
    for label, model, switches in variants:
        start = time.perf_counter()
        result = run_recbole_mm(model, dataset, config_files, config_dict={
            "state": "WARNING", "epochs": epochs, "data_path": data_path,
            "checkpoint_dir": os.path.join(out_dir, "saved"), **switches})
        os.remove(result["saved_model_file"])
        valid, test = result["best_valid_result"], result["test_result"]
        rows.append((label, valid["recall@20"], valid["ndcg@20"], test["recall@20"], test["ndcg@20"],
                     time.perf_counter() - start))
        print(rows[-1], flush=True)
    return rows


def write_table(path, title, rows, command, notes=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(f"# {title}\n\n")
        handle.write("| variant | valid R@20 | valid N@20 | test R@20 | test N@20 | seconds |\n|---|---|---|---|---|---|\n")
        for label, vr, vn, tr, tn, seconds in rows:
            handle.write(f"| {label} | {vr:.4f} | {vn:.4f} | {tr:.4f} | {tn:.4f} | {seconds:.0f} |\n")
        handle.write(f"\nCommand: `{command}`\n")
        if notes:
            handle.write(f"\n{notes}\n")


def ablation_main(variants, name, description, title, notes=""):
    """The command line of an ablation script: ``--dataset --data-path --epochs --out``;
    writes ``<out>/<name>_<dataset>.md``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args()
    rows = run_variants(variants, args.dataset, args.epochs, args.data_path, args.out)
    write_table(os.path.join(args.out, f"{name}_{args.dataset}.md"),
                f"{title} on {args.dataset} (at most {args.epochs} epochs, packaged defaults)", rows,
                f"python benchmarks/{name}.py --dataset {args.dataset} --epochs {args.epochs}", notes)
