"""GUIDER's ablations (paper Table 3) and its teacher alone, with two students under injected
noise, on one dataset.

    python benchmarks/guider_ablation.py --dataset synthetic --epochs 40

Students VBPR and FREEDOM, 10% injected noise (``noise_ratio`` 0.1): the plain student;
GUIDER with its packaged defaults; each switch (w/o DBPR, w/o AMSC, KL instead of OT, no KD
at all); a lighter KD weight; a larger Sinkhorn lambda; and the teacher (LightGCN with
GUIDER's teacher learning rate and batch) trained on its own, so that each student can be
compared with what it distils from.
results/guider_ablation_<dataset>.md gets valid and test Recall@20 / NDCG@20.
"""
from ablation_table import ablation_main

NOISE = {"noise_ratio": 0.1}
SWITCHES = [
    ("plain", {}),
    ("+ GUIDER (packaged defaults)", {"guider": True}),
    ("+ GUIDER w/o DBPR (guider_dbpr false)", {"guider": True, "guider_dbpr": False}),
    ("+ GUIDER w/o AMSC (guider_amsc false)", {"guider": True, "guider_amsc": False}),
    ("+ GUIDER, KL instead of OT", {"guider": True, "guider_kd": "kl"}),
    ("+ GUIDER, no KD (teacher trained, unused)", {"guider": True, "guider_kd": "none"}),
    ("+ GUIDER, KD weight 0.1", {"guider": True, "guider_kd_weight": 0.1}),
    ("+ GUIDER, Sinkhorn lambda 1", {"guider": True, "guider_sinkhorn_reg": 1.0}),
]
VARIANTS = [(f"{model} {label}", model, {**NOISE, **switches}) for model in ("VBPR", "FREEDOM")
            for label, switches in SWITCHES] + [
    ("teacher alone: LightGCN, lr 0.005, batch 8192", "LightGCN",
     {**NOISE, "learning_rate": 0.005, "train_batch_size": 8192}),
]


def main():
    ablation_main(VARIANTS, "guider_ablation", __doc__,
                  "GUIDER ablations, VBPR and FREEDOM students, 10% injected noise",
                  "Machine: 2 CPU cores, no GPU, torch 2.13.0+cpu.")


if __name__ == "__main__":
    main()
