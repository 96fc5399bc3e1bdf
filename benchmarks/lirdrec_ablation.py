"""LIRDRec's ablations (paper Tables III-IV) on a dataset, beside FREEDOM, VBPR, LightGCN, BPR.

    python benchmarks/lirdrec_ablation.py --dataset synthetic --epochs 60

Each variant is a switch on the same class; results/lirdrec_ablation_<dataset>.md gets valid
and test Recall@20 / NDCG@20 (test at the best valid epoch).
"""
import argparse
import os

from ablation_table import REPO, run_variants, write_table

VARIANTS = [
    ("LIRDRec", "LIRDRec", {}),
    ("LIRDRec w/o PWC", "LIRDRec", {"use_pwc": False}),
    ("LIRDRec w/o DCT", "LIRDRec", {"dct_mode": "none"}),
    ("LIRDRec 2-D DCT (paper text)", "LIRDRec", {"dct_mode": "2d"}),
    ("LIRDRec w/o visual", "LIRDRec", {"use_visual": False}),
    ("LIRDRec w/o textual", "LIRDRec", {"use_textual": False}),
    ("FREEDOM", "FREEDOM", {}),
    ("VBPR", "VBPR", {}),
    ("LightGCN", "LightGCN", {}),
    ("BPR", "BPR", {}),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args()
    rows = run_variants(VARIANTS, args.dataset, args.epochs, args.data_path, args.out)
    write_table(os.path.join(args.out, f"lirdrec_ablation_{args.dataset}.md"),
                f"LIRDRec ablations on {args.dataset} (at most {args.epochs} epochs, packaged defaults)", rows,
                f"python benchmarks/lirdrec_ablation.py --dataset {args.dataset} --epochs {args.epochs}")


if __name__ == "__main__":
    main()
