"""GUIDER against the plain student and the denoising baselines under injected noise.

    python benchmarks/guider_noise.py --dataset synthetic --epochs 40 --models VBPR FREEDOM

For each student model and noise ratio (0, 0.1, 0.2 of the train split added as random
user-item pairs; valid and test untouched): the plain model, GUIDER (properties/guider.yaml
defaults), T-CE, R-CE and WBPR. results/guider_noise_<dataset>.md gets valid and test
Recall@20 / NDCG@20 (test at the best valid epoch).
"""
import argparse
import os

from ablation_table import REPO, run_variants, write_table

METHODS = [
    ("plain", {}),
    ("GUIDER", {"guider": True}),
    ("T-CE", {"denoise": "tce"}),
    ("R-CE", {"denoise": "rce"}),
    ("WBPR", {"denoise": "wbpr"}),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--models", nargs="+", default=["VBPR", "FREEDOM"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.1, 0.2])
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args()
    variants = [(f"{model}, noise {noise:g}, {label}", model, {"noise_ratio": noise, **switches})
                for model in args.models for noise in args.noise for label, switches in METHODS]
    rows = run_variants(variants, args.dataset, args.epochs, args.data_path, args.out)
    write_table(os.path.join(args.out, f"guider_noise_{args.dataset}.md"),
                f"GUIDER and denoising baselines under injected noise on {args.dataset} "
                f"(at most {args.epochs} epochs, packaged defaults)", rows,
                f"python benchmarks/guider_noise.py --dataset {args.dataset} --epochs {args.epochs} "
                f"--models {' '.join(args.models)}",
                "Machine: 2 CPU cores, no GPU, torch 2.13.0+cpu. Noise: that share of the train split "
                "added as random user-item pairs, valid and test untouched.")


if __name__ == "__main__":
    main()
