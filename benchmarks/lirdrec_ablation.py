"""LIRDRec's ablations (paper Tables III-IV) on a dataset, beside FREEDOM, VBPR, LightGCN, BPR.

    python benchmarks/lirdrec_ablation.py --dataset synthetic --epochs 60

Each variant is a switch on the same class; results/lirdrec_ablation_<dataset>.md gets valid
and test Recall@20 / NDCG@20 (test at the best valid epoch).
"""
from ablation_table import ablation_main

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
    ablation_main(VARIANTS, "lirdrec_ablation", __doc__, "LIRDRec ablations")


if __name__ == "__main__":
    main()
