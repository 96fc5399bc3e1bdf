"""GUIDER's ablations (paper Table 3) and its teacher alone, with one student under injected
noise, on one dataset.

    python benchmarks/guider_ablation.py --dataset synthetic --epochs 40

Student VBPR, 10% injected noise (``noise_ratio`` 0.1): the plain student; GUIDER with its
packaged defaults; each switch (w/o DBPR, w/o AMSC, KL instead of OT, no KD at all); a
lighter KD weight; and the teacher (LightGCN with GUIDER's teacher learning rate and batch)
trained on its own, so that the student can be compared with what it distils from.
results/guider_ablation_<dataset>.md gets valid and test Recall@20 / NDCG@20.
"""
from ablation_table import ablation_main

NOISE = {"noise_ratio": 0.1}
VARIANTS = [
    ("VBPR plain", "VBPR", NOISE),
    ("VBPR + GUIDER (packaged defaults)", "VBPR", {**NOISE, "guider": True}),
    ("VBPR + GUIDER w/o DBPR (guider_dbpr false)", "VBPR", {**NOISE, "guider": True, "guider_dbpr": False}),
    ("VBPR + GUIDER w/o AMSC (guider_amsc false)", "VBPR", {**NOISE, "guider": True, "guider_amsc": False}),
    ("VBPR + GUIDER, KL instead of OT", "VBPR", {**NOISE, "guider": True, "guider_kd": "kl"}),
    ("VBPR + GUIDER, no KD (teacher trained, unused)", "VBPR", {**NOISE, "guider": True, "guider_kd": "none"}),
    ("VBPR + GUIDER, KD weight 0.1", "VBPR", {**NOISE, "guider": True, "guider_kd_weight": 0.1}),
    ("teacher alone: LightGCN, lr 0.005, batch 8192", "LightGCN",
     {**NOISE, "learning_rate": 0.005, "train_batch_size": 8192}),
]


def main():
    ablation_main(VARIANTS, "guider_ablation", __doc__, "GUIDER ablations, VBPR student, 10% injected noise",
                  "Machine: 2 CPU cores, no GPU, torch 2.13.0+cpu.")


if __name__ == "__main__":
    main()
