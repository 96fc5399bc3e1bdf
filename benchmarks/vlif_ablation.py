"""VLIF's fusion ablations (paper Table 2, "Multimodal Fusion") and its token split, beside
DRAGON, VBPR and BPR, on one dataset.

    python benchmarks/vlif_ablation.py --dataset synthetic --epochs 60

Each variant is a switch on the same class; results/vlif_ablation_<dataset>.md gets valid
and test Recall@20 / NDCG@20 (test at the best valid epoch).
"""
import os

import yaml
from ablation_table import ablation_main

PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")


def profile(name):
    """The keys of ``properties/<name>.yaml`` (a VLIF profile), as overrides."""
    with open(os.path.join(PROPERTIES, f"{name}.yaml")) as handle:
        return yaml.safe_load(handle)


VARIANTS = [
    ("VLIF, code profile (public redu2: PID fusion, 1 token; the default)", "VLIF", {}),
    ("VLIF, paper profile (properties/vlif_paper.yaml)", "VLIF", profile("vlif_paper")),
    ("VLIF, code profile, fusion_tokens 4", "VLIF", {"fusion_tokens": 4}),
    ("VLIF synergy only (public master: properties/vlif_master.yaml)", "VLIF", profile("vlif_master")),
    ("VLIF weighted concat", "VLIF", {"fusion": "weighted"}),
    ("VLIF concat", "VLIF", {"fusion": "concat"}),
    ("VLIF pooling", "VLIF", {"fusion": "pooling"}),
    ("DRAGON", "DRAGON", {}),
    ("VBPR", "VBPR", {}),
    ("BPR", "BPR", {}),
]


def main():
    ablation_main(VARIANTS, "vlif_ablation", __doc__, "VLIF fusion ablations",
                  "Machine: 2 CPU cores, no GPU, torch 2.13.0+cpu. The synthetic dataset's image "
                  "modality is a generated feature, not a VLM description: the feature-side rows of "
                  "the paper's Table 2 need real images.")


if __name__ == "__main__":
    main()
