"""Reproduce the NF-VLM paper's experiment (§4–6) on its simulated benchmark.

Paper: "NF-VLM: Noise-Filtered Vision-Language Embeddings for Full-Ranking Recommendation".

The paper simulates 10,000 users and ~40,000 items with 512-d CLIP-like embeddings and ranks
each test positive against all 40,000 other items. Here the benchmark is the
``clip_synthetic`` dataset (recbole_mm/properties/dataset/clip_synthetic.yaml): a rank-16
preference signal planted inside 512-d embeddings beneath higher-variance nuisance directions
(rank 32, twice the amplitude) plus noise, each embedding L2-normalised (unit norm, as real
CLIP embeddings), popularity-skewed interactions, random timestamps, and an ``.item`` file
so that all 40,000 items (not only those with interactions) are candidates. Protocol:
properties/nfvlm.yaml (leave-one-out by time, full ranking, GAUC, NDCG@10, Recall@10,
selection on valid NDCG@10).

Every finished run is appended to ``runs.jsonl`` in the output folder (and skipped when the
same run is already there, so an interrupted benchmark resumes); the tables and figures are
then written from that file:
- table2.md: MLP (CLIPMLP), MF (BPR) and NF-VLM (r=16, lambda=0), test GAUC / NDCG@10 /
  Recall@10 beside the paper's Table 2;
- table1.md: NF-VLM's r x lambda grid (noise scope ``batch``, Algorithm 1), valid NDCG@10
  beside the paper's Table 1;
- noise_scope.md: the same grid with the noise penalty over the whole catalogue
  (``catalogue``, Eq. 2) beside ``batch``, and the measured ratio of the two penalties;
- fig1_ndcg_vs_rank.png (lambda = 1e-3, as the paper's Fig. 1), fig2_recall_vs_lambda.png
  (r = 128, Fig. 2), fig3_heatmap.png (Fig. 3, ours beside the paper's Table 1);
- summary.md: settings, machine and wall-clock time of each process.

    python benchmarks/nfvlm_paper.py --epochs 30 --eval-step 5           # everything, one process
    python benchmarks/nfvlm_paper.py --parts table2 grid --scopes batch  # two processes sharing
    python benchmarks/nfvlm_paper.py --parts grid --scopes catalogue     #   one runs.jsonl
    python benchmarks/nfvlm_paper.py --report-only                       # rewrite the tables
    python benchmarks/nfvlm_paper.py --epochs 5 --ranks 8 16 --lambdas 0 0.001 --out /tmp/nf  # a quick look
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the paper's Table 2 (AUC, NDCG@10, Recall@10) and Table 1 (valid NDCG@10, rank -> lambda -> value)
PAPER_TABLE2 = {"CLIPMLP": (0.614, 0.002, 0.003), "BPR": (0.642, 0.000, 0.001), "NFVLM": (0.693, 0.005, 0.006)}
PAPER_TABLE1 = {
    8: {0.0: 0.002, 1e-4: 0.001, 1e-3: 0.001, 3e-3: 0.002},
    16: {0.0: 0.005, 1e-4: 0.003, 1e-3: 0.003, 3e-3: 0.002},
    32: {0.0: 0.001, 1e-4: 0.002, 1e-3: 0.002, 3e-3: 0.002},
    64: {0.0: 0.004, 1e-4: 0.003, 1e-3: 0.004, 3e-3: 0.003},
}
TABLE2_MODELS = (("CLIPMLP", "MLP", {}), ("BPR", "MF (BPR)", {}),
                 ("NFVLM", "NF-VLM (r=16, lambda=0)", {"nfvlm_rank": 16, "nfvlm_lambda": 0.0}))
RUNS_FILE = "runs.jsonl"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="clip_synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eval-step", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 3e-3])
    parser.add_argument("--scopes", nargs="+", default=["batch", "catalogue"], choices=["batch", "catalogue"],
                        help="noise scopes of the grid (catalogue runs only lambda > 0: at 0 both are one model)")
    parser.add_argument("--parts", nargs="+", default=["table2", "grid"], choices=["table2", "grid"])
    parser.add_argument("--grid-metrics", nargs="+", default=["GAUC", "NDCG", "Recall"],
                        help="metrics of the grid runs (Table 1 needs only NDCG; GAUC ranks every item "
                             "and is the costliest part of an evaluation)")
    parser.add_argument("--reverse", action="store_true", help="walk the grid from the largest rank down "
                        "(a second process sharing runs.jsonl then meets the first one in the middle)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite tables and figures from runs.jsonl")
    parser.add_argument("--note", action="append", default=[], help="a line for summary.md (repeatable)")
    parser.add_argument("--out", default=os.path.join(REPO, "results", "nfvlm"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    args.command = "python benchmarks/nfvlm_paper.py " + " ".join(sys.argv[1:])
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    return args


class Experiment:
    """One dataset and split, many models trained on it (the dataset is loaded once)."""

    def __init__(self, args):
        import recbole_mm  # noqa: F401
        from recbole_mm.config import Config
        from recbole_mm.data import create_dataset, data_preparation

        self.args = args
        self.base = {
            "data_path": args.data_path, "checkpoint_dir": os.path.join(args.out, "saved", str(os.getpid())),  # per process: names carry only the second
            "epochs": args.epochs, "eval_step": args.eval_step, "stopping_step": 10 ** 6, "state": "WARNING",
        }
        if args.device:
            self.base.update(device=args.device, use_gpu=args.device != "cpu")
        self.protocol = [os.path.join(REPO, "properties", "nfvlm.yaml")]
        config = Config("NFVLM", args.dataset, self.protocol, self.base)
        self.dataset = create_dataset(config)
        self.loaders = data_preparation(config, self.dataset)

    def run(self, model_name, **params):
        """Train with early model selection on valid NDCG@10; return (best valid, test) results."""
        from recbole.utils import init_seed

        from recbole_mm.config import Config
        from recbole_mm.trainer import get_trainer
        from recbole_mm.utils import get_model

        config = Config(model_name, self.args.dataset, self.protocol, {**self.base, **params})
        init_seed(config["seed"], config["reproducibility"])
        train, valid, test = self.loaders
        model = get_model(model_name)(config, train._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
        _, best_valid = trainer.fit(train, valid, saved=True)
        test_result = trainer.evaluate(test, load_best_model=True)
        os.remove(trainer.saved_model_file)
        as_floats = lambda result: {key: float(value) for key, value in result.items()}  # noqa: E731
        return as_floats(best_valid), as_floats(test_result)


def penalty_ratio(experiment, rank, batches=20):
    """Mean over ``batches`` training batches of the catalogue-scope penalty divided by the
    batch-scope one, at the initial (PCA) projection of rank ``rank``."""
    import torch

    from recbole_mm.config import Config
    from recbole_mm.utils import get_model

    config = Config("NFVLM", experiment.args.dataset, experiment.protocol,
                    {**experiment.base, "nfvlm_rank": rank, "nfvlm_lambda": 1.0, "nfvlm_noise_scope": "catalogue"})
    train = experiment.loaders[0]
    model = get_model("NFVLM")(config, train._dataset)
    with torch.no_grad():
        catalogue = float(model.catalogue_noise() / model.n_train_triples)
    batch_terms = []
    for index, batch in enumerate(train):
        if index == batches:
            break
        pos, neg = model.item_features[batch[model.ITEM_ID]], model.item_features[batch[model.NEG_ITEM_ID]]
        with torch.no_grad():
            batch_terms.append(float((model.noise_residual(pos).pow(2).sum(-1)
                                      + model.noise_residual(neg).pow(2).sum(-1)).mean()))
    return {"catalogue": catalogue, "batch": float(np.mean(batch_terms)), "items": model.n_items - 1,
            "triples": model.n_train_triples}


def read_runs(path):
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_run(path, record):
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def run_key(record):
    return (record["kind"], record.get("model"), record.get("rank"), record.get("lambda"), record.get("scope"),
            record["epochs"], record["eval_step"], record["dataset"])


def claim(path, record):
    """Claim a run for this process: False when ``runs.jsonl`` already holds it, or a claim of
    it by a process that is still alive (so two processes can share one grid)."""
    key = run_key(record)
    for other in read_runs(path):
        if other["kind"] == "claim" and tuple(other["key"]) == key:
            try:
                os.kill(other["pid"], 0)
                return False
            except OSError:
                continue
        elif other["kind"] != "claim" and run_key(other) == key:
            return False
    append_run(path, {"kind": "claim", "key": list(key), "pid": os.getpid(), "epochs": record["epochs"],
                      "eval_step": record["eval_step"], "dataset": record["dataset"]})
    return True


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def paper_cell(rank, lam):
    value = PAPER_TABLE1.get(rank, {}).get(lam)
    return "-" if value is None else f"{value:.3f}"


def grid_of(runs, scope):
    """(rank, lambda) -> run, lambda = 0 shared by both scopes (the penalty is off)."""
    grid = {}
    for run in runs:
        if run["kind"] == "grid" and (run["scope"] == scope or run["lambda"] == 0.0):
            grid[(run["rank"], run["lambda"])] = run
    return grid


def plot(out, grid, catalogue):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = sorted({rank for rank, _ in grid})
    lambdas = sorted({lam for _, lam in grid})
    value = lambda table, rank, lam, metric: (  # noqa: E731
        table[(rank, lam)]["valid"][metric] if (rank, lam) in table else np.nan)

    fixed_lambda = 1e-3 if 1e-3 in lambdas else lambdas[-1]
    figure, axis = plt.subplots(figsize=(4.8, 3.4))
    axis.plot(ranks, [value(grid, r, fixed_lambda, "ndcg@10") for r in ranks], marker="o", label="ours, batch")
    if catalogue:
        axis.plot(ranks, [value(catalogue, r, fixed_lambda, "ndcg@10") for r in ranks], marker="s",
                  label="ours, catalogue")
    paper_ranks = [r for r in ranks if fixed_lambda in PAPER_TABLE1.get(r, {})]
    axis.plot(paper_ranks, [PAPER_TABLE1[r][fixed_lambda] for r in paper_ranks], marker="^", ls="--",
              label="paper (Table 1)")
    axis.set(xscale="log", xlabel="rank r", ylabel="valid NDCG@10", title=f"NF-VLM, lambda = {fixed_lambda:g}")
    axis.set_xticks(ranks, [str(r) for r in ranks])
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(out, "fig1_ndcg_vs_rank.png"), dpi=150)
    plt.close(figure)

    fixed_rank = 128 if 128 in ranks else ranks[-1]
    figure, axis = plt.subplots(figsize=(4.8, 3.4))
    positions = np.arange(len(lambdas))
    axis.plot(positions, [value(grid, fixed_rank, lam, "recall@10") for lam in lambdas], marker="o",
              label="ours, batch")
    if catalogue:
        axis.plot(positions, [value(catalogue, fixed_rank, lam, "recall@10") for lam in lambdas], marker="s",
                  label="ours, catalogue")
    axis.set_xticks(positions, [f"{lam:g}" for lam in lambdas])
    axis.set(xlabel="noise weight lambda", ylabel="valid Recall@10",
             title=f"NF-VLM, r = {fixed_rank} (the paper gives no values)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(out, "fig2_recall_vs_lambda.png"), dpi=150)
    plt.close(figure)

    paper_ranks = sorted(PAPER_TABLE1)
    panels = [("ours (batch scope)", ranks, np.array([[value(grid, r, lam, "ndcg@10") for lam in lambdas]
                                                      for r in ranks]))]
    if catalogue:
        panels.append(("ours (catalogue scope)", ranks,
                       np.array([[value(catalogue, r, lam, "ndcg@10") for lam in lambdas] for r in ranks])))
    panels.append(("paper (Table 1)", paper_ranks,
                   np.array([[PAPER_TABLE1[r].get(lam, np.nan) for lam in lambdas] for r in paper_ranks])))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for axis, (title, rows, values) in zip(axes, panels):
        image = axis.imshow(values, cmap="viridis", aspect="auto")
        axis.set_xticks(positions, [f"{lam:g}" for lam in lambdas])
        axis.set_yticks(np.arange(len(rows)), [str(r) for r in rows])
        axis.set(xlabel="lambda", ylabel="rank r", title=f"valid NDCG@10, {title}")
        for (row, col), cell in np.ndenumerate(values):
            if np.isfinite(cell):
                axis.text(col, row, f"{cell:.3f}", ha="center", va="center", color="white", fontsize=7)
        figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(os.path.join(out, "fig3_heatmap.png"), dpi=150)
    plt.close(figure)


def write_reports(args):
    """table1.md, table2.md, noise_scope.md, the figures and summary.md from runs.jsonl."""
    records = read_runs(os.path.join(args.out, RUNS_FILE))
    settings = (args.epochs, args.eval_step)
    runs = [r for r in records if (r["epochs"], r["eval_step"]) == settings and r["kind"] in ("table2", "grid")]
    processes = [r for r in records if r["kind"] == "process" and (r["epochs"], r["eval_step"]) == settings]
    ratios = [r for r in records if r["kind"] == "penalty"]
    fmt = lambda value: f"{value:.4f}"  # noqa: E731

    table2 = {r["model"]: r for r in runs if r["kind"] == "table2"}
    if table2:
        rows = []
        for name, label, _ in TABLE2_MODELS:
            if name in table2:
                test, paper = table2[name]["test"], PAPER_TABLE2[name]
                rows.append([label, f"{test['gauc']:.3f}", fmt(test["ndcg@10"]), fmt(test["recall@10"]),
                             f"{paper[0]:.3f}", f"{paper[1]:.3f}", f"{paper[2]:.3f}", f"{table2[name]['seconds']:.0f}"])
        with open(os.path.join(args.out, "table2.md"), "w") as handle:
            handle.write("# Table 2: test results on the simulated CLIP benchmark, ours beside the paper's\n\n")
            handle.write(f"{args.epochs} epochs, best of the validations every {args.eval_step} epochs (valid "
                         "NDCG@10); each user's test positive ranked against every item the user has not "
                         "interacted with (40,000 items + padding id). GAUC is RecBole's full-ranking AUC; "
                         "the paper reports AUC.\n\n")
            handle.write(markdown_table(["model", "GAUC", "NDCG@10", "Recall@10", "paper AUC", "paper NDCG@10",
                                         "paper Recall@10", "seconds"], rows))

    grid, catalogue = grid_of(runs, "batch"), grid_of(runs, "catalogue")
    if grid:
        ranks = sorted({rank for rank, _ in grid})
        lambdas = sorted({lam for _, lam in grid})
        cell = lambda table, r, lam: fmt(table[(r, lam)]["valid"]["ndcg@10"]) if (r, lam) in table else "-"  # noqa: E731
        header = ["rank \\ lambda"] + [f"{lam:g} (paper)" for lam in lambdas]
        rows = [[r] + [f"{cell(grid, r, lam)} ({paper_cell(r, lam)})" for lam in lambdas] for r in ranks]
        best = max(grid, key=lambda key: grid[key]["valid"]["ndcg@10"])
        with open(os.path.join(args.out, "table1.md"), "w") as handle:
            handle.write("# Table 1: NF-VLM valid NDCG@10 over the rank x lambda grid, ours (paper's)\n\n")
            handle.write("Noise scope `batch` (Algorithm 1: the penalty on the items i, j of each triple); "
                         "the `catalogue` scope (Eq. 2) is in noise_scope.md. The paper's grid stops at "
                         "r = 64.\n\n")
            handle.write(markdown_table(header, rows))
            handle.write(f"\nSelected on validation: r = {best[0]}, lambda = {best[1]:g} (test NDCG@10 "
                         f"{fmt(grid[best]['test']['ndcg@10'])}, Recall@10 {fmt(grid[best]['test']['recall@10'])}); "
                         "the paper selects r = 16, lambda = 0.\n")
        if catalogue:
            header = ["rank \\ lambda"] + [f"{lam:g}" for lam in lambdas]
            rows = [[r] + [f"{cell(grid, r, lam)} / {cell(catalogue, r, lam)}" for lam in lambdas] for r in ranks]
            with open(os.path.join(args.out, "noise_scope.md"), "w") as handle:
                handle.write("# Noise scope: valid NDCG@10, `batch` / `catalogue`\n\n")
                handle.write("`batch` (default, Algorithm 1 line 8): lambda times the batch mean of "
                             "||x_i - PP'x_i||^2 + ||x_j - PP'x_j||^2. `catalogue` (Eq. 2): lambda times "
                             "sum over all N items of ||x_i - PP'x_i||^2 / |D| per batch, so an epoch's batches "
                             "sum to Eq. 2 / B. At lambda = 0 both are the same model (one run).\n\n")
                handle.write(markdown_table(header, rows))
                if ratios:
                    handle.write("\nStrength of the catalogue penalty relative to the batch one, at the PCA "
                                 "initialisation (mean over 20 training batches):\n\n")
                    handle.write(markdown_table(
                        ["rank", "catalogue term", "batch term", "catalogue / batch", "N / (2 |D|)"],
                        [[r["rank"], f"{r['catalogue']:.4f}", f"{r['batch']:.4f}",
                          f"{r['catalogue'] / r['batch']:.3f}", f"{r['items'] / (2 * r['triples']):.3f}"]
                         for r in sorted(ratios, key=lambda r: r["rank"])]))
                    handle.write("\nPer batch the catalogue term is about N·E||r||² / |D| and the batch term "
                                 "2·E||r||² (E over the items of the triples), so their ratio is close to "
                                 "N / (2|D|): with 40,000 items and ~100,000 training triples the catalogue "
                                 "scope is the weaker one here.\n")
        plot(args.out, grid, catalogue)

    if processes:
        last = processes[-1]
        with open(os.path.join(args.out, "summary.md"), "w") as handle:
            handle.write("# NF-VLM reproduction run\n\n")
            handle.write(f"- dataset: clip_synthetic, {last['users']} users, {last['items']} items "
                         f"({last['items'] + 1} item ids with padding: every item is a full-ranking candidate, "
                         f"as in the paper), {last['interactions']} interactions; 512-d simulated CLIP "
                         "embeddings, L2-normalised (unit norm, as real CLIP embeddings)\n")
            handle.write(f"- settings: {args.epochs} epochs, validation every {args.eval_step} epochs, "
                         "Adam lr 1e-3, batches of 1024 triples (the paper's), selection on valid NDCG@10\n")
            for process in processes:
                handle.write(f"- `{process['command']}`: {process['machine']}; {process['runs']} runs, "
                             f"wall-clock {process['seconds'] / 60:.1f} min\n")
            if table2:
                handle.write("\nTable 2 (test), ours vs paper:\n\n")
                for name, label, _ in TABLE2_MODELS:
                    if name in table2:
                        test, paper = table2[name]["test"], PAPER_TABLE2[name]
                        handle.write(f"- {label}: GAUC {test['gauc']:.3f} (paper AUC {paper[0]:.3f}), NDCG@10 "
                                     f"{fmt(test['ndcg@10'])} ({paper[1]:.3f}), Recall@10 "
                                     f"{fmt(test['recall@10'])} ({paper[2]:.3f})\n")
            if args.note:
                handle.write("\nNotes:\n\n" + "".join(f"- {line}\n" for line in args.note))
            handle.write("\nTables: table1.md, table2.md, noise_scope.md; figures fig1-3; every run: runs.jsonl.\n")


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.report_only:
        write_reports(args)
        return
    import torch

    runs_path = os.path.join(args.out, RUNS_FILE)
    started = time.perf_counter()
    experiment = Experiment(args)
    dataset = experiment.dataset
    loaded = time.perf_counter() - started
    stamp = f"{args.dataset}:{dataset.user_num - 1}x{dataset.item_num - 1}:{dataset.inter_num}"
    print(f"dataset ready in {loaded:.1f}s: {stamp}", flush=True)
    common = {"epochs": args.epochs, "eval_step": args.eval_step, "dataset": stamp,
              "threads": torch.get_num_threads()}

    def run_once(kind, model_name, **fields):
        record = {"kind": kind, "model": model_name, **common, **fields}
        if not claim(runs_path, record):
            print("done or under way elsewhere:", run_key(record), flush=True)
            return 0
        params = {"nfvlm_rank": fields["rank"], "nfvlm_lambda": fields["lambda"], "nfvlm_noise_scope": fields["scope"],
                  "metrics": args.grid_metrics} if kind == "grid" else dict(fields.get("params", {}))
        start = time.perf_counter()
        valid, test = experiment.run(model_name, **params)
        record.update(valid=valid, test=test, seconds=time.perf_counter() - start)
        append_run(runs_path, record)
        print(kind, model_name, fields, "valid", valid, "test", test, f"{record['seconds']:.0f}s", flush=True)
        return 1

    count = 0
    if "table2" in args.parts:
        for name, _, params in TABLE2_MODELS:
            count += run_once("table2", name, params=params)
    if "grid" in args.parts:
        if "catalogue" in args.scopes:
            for rank in sorted({16, max(args.ranks)}):
                ratio = {"kind": "penalty", "rank": rank, **common}
                if run_key(ratio) not in {run_key(r) for r in read_runs(runs_path)}:
                    append_run(runs_path, {**ratio, **penalty_ratio(experiment, rank)})
        for scope in args.scopes:
            for rank in (reversed(args.ranks) if args.reverse else args.ranks):
                for lam in args.lambdas:
                    if scope == "catalogue" and lam == 0.0:
                        continue  # the penalty is off: the batch-scope run is this model
                    count += run_once("grid", "NFVLM", rank=rank, scope=scope, **{"lambda": lam})
    total = time.perf_counter() - started
    append_run(runs_path, {
        "kind": "process", **common, "command": args.command, "seconds": total, "runs": count,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                   f"device {experiment.loaders[0].config['device']}",
        "users": dataset.user_num - 1, "items": dataset.item_num - 1, "interactions": dataset.inter_num,
    })
    write_reports(args)
    print(f"done in {total / 60:.1f} min; results in {args.out}")


if __name__ == "__main__":
    main()
