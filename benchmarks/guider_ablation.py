"""GUIDER's ablations (paper Table 3 and the choices this implementation makes), 10% injected
noise, one seed, on one dataset.

    python benchmarks/guider_ablation.py --dataset synthetic --epochs 40

Each variant changes one key of the packaged defaults (``guider: true``); the plain student,
GUIDER itself and GUIDER-DBPR are in ``guider_noise.py``'s table. Runs are appended to
``<out>/guider_ablation_<dataset>.jsonl`` (a rerun skips those already there) and
``<out>/guider_ablation_<dataset>.md`` gets valid / test Recall@20 and NDCG@20, I_false's
share with its precision and recall on the injected pairs, and the teacher's test Recall@20.
"""
import argparse
import json
import os
import sys

from ablation_table import REPO
from guider_noise import load_runs, parse_overrides, run_key, run_one

GUIDER = {"guider": True, "guider_eval_teacher": True, "guider_fallback": False}  # GUIDER's own result
VBPR_VARIANTS = [
    ("DBPR weight 0.1", {"guider_dbpr_weight": 0.1}),
    ("DBPR weight 1", {"guider_dbpr_weight": 1.0}),
    ("w/o AMSC (loss split alone)", {"guider_amsc": False}),
    ("S_conf from the CCA hash (Eq. 6)", {"guider_hash_confidence": True}),
    ("no warm-up", {"guider_warmup_epochs": 0}),
    ("no teacher pre-training (Algorithm 1 from scratch)", {"guider_teacher_pretrain_epochs": 0}),
    ("KD: per-row KL (authors' HEAD)", {"guider_kd": "kl"}),
    ("KD: pair-logit OT (literal reading)", {"guider_kd": "ot_pairs", "guider_sinkhorn_reg": 0.1}),
    ("KD: none (teacher unused)", {"guider_kd": "none"}),
    ("student AdamW, weight decay 1e-4 (paper)", {"guider_student_learner": "adamw",
                                                   "guider_student_weight_decay": 1e-4}),
    ("KD: row transport between the batch's row sets (Eq. 9-15)", {"guider_kd": "ot"}),
]

def variants_named(*labels):
    """The VBPR variants with these labels, in this order (a label that is not there: KeyError)."""
    by_label = dict(VBPR_VARIANTS)
    return [(label, by_label[label]) for label in labels]


FREEDOM_VARIANTS = (variants_named("no teacher pre-training (Algorithm 1 from scratch)")
                    + [("KD: center rows (no scaling)", {"guider_kd_transform": "center"})]
                    + variants_named("KD: per-row KL (authors' HEAD)", "KD: none (teacher unused)",
                                     "KD: row transport between the batch's row sets (Eq. 9-15)"))
VARIANTS = ([("VBPR", label, switches) for label, switches in VBPR_VARIANTS]
            + [("FREEDOM", label, switches) for label, switches in FREEDOM_VARIANTS]
            + [("LightGCN", "teacher alone: LightGCN, lr 0.005, batch 8192, 80 epochs",
                {"learning_rate": 0.005, "train_batch_size": 8192, "epochs": 80, "stopping_step": 80})])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (yaml values), e.g. guider_kd_retry=~")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    args.overrides = parse_overrides(args.set)
    jsonl = os.path.join(args.out, f"guider_ablation_{args.dataset}.jsonl")
    done = {run_key(r["model"], r["noise"], r["method"], r["seed"], r.get("overrides")) for r in load_runs(jsonl)}
    for model, label, switches in VARIANTS:
        if run_key(model, args.noise, label, args.seed, args.overrides) in done:
            continue
        extra = GUIDER if model != "LightGCN" else {}
        record = run_one(model, args.dataset, args.noise, label, args.seed, args, {**extra, **switches})
        with open(jsonl, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    fmt = lambda value: "" if value is None else f"{value:.4f}"  # noqa: E731
    lines = [f"# GUIDER ablations on {args.dataset}: {args.noise:g} injected noise, seed {args.seed}, at most "
             f"{args.epochs} epochs\n", "| student | variant | valid R@20 | valid N@20 | test R@20 | test N@20 | "
             "I_false share | precision | recall | teacher test R@20 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in load_runs(jsonl):
        lines.append(f"| {r['model']} | {r['method']} | {r['valid']['recall@20']:.4f} | {r['valid']['ndcg@20']:.4f} | "
                     f"{r['test']['recall@20']:.4f} | {r['test']['ndcg@20']:.4f} | {fmt(r.get('false_share'))} | "
                     f"{fmt(r.get('precision'))} | {fmt(r.get('recall'))} | {fmt(r.get('teacher_test_recall@20'))} |")
    command = (f"python benchmarks/guider_ablation.py --dataset {args.dataset} --epochs {args.epochs}"
               + (f" --set {' '.join(args.set)}" if args.set else ""))
    lines += ["", f"Command: `{command}`",
              "", "Machine: 2 CPU cores, no GPU, torch 2.13.0+cpu, OMP_NUM_THREADS=1. Each row changes one key of "
              "the packaged defaults (guider: true); the teacher's Recall@20 is at the end of training."]
    with open(os.path.join(args.out, f"guider_ablation_{args.dataset}.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
