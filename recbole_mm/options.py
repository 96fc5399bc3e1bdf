"""The allowed values of the config options that take one of a few names.

Each tuple is declared once, here, at the bottom of the package (this module imports nothing),
so that both sides read the same one: the module that acts on the option imports its tuple
from here (and keeps the name, e.g. ``recbole_mm.trainer.guider.KD_MODES``), and
:func:`recbole_mm.config.value_checks` checks the config against it without importing the
trainers, models or loaders above the config. A new value is added here and handled there.
"""

# data (recbole_mm.data)
EVAL_PROTOCOLS = ("recbole", "mmrec")  # eval_protocol: data_preparation
TRAIN_SAMPLINGS = ("interaction", "user")  # train_sampling: data.dataloader

# trainers (recbole_mm.trainer)
DENOISE_MODES = (None, "tce", "rce", "wbpr", "bod", "damrs")  # denoise: trainer.trainer
OPTIMIZER_IMPLS = ("fused", "foreach", "single", "recbole")  # optimizer_impl: trainer.trainer
KD_MODES = ("ot", "matched", "ot_pairs", "kl", "none")  # guider_kd: trainer.guider
GUIDER_WEIGHTINGS = ("fixed", "mgda")  # guider_weighting: trainer.guider
KD_BALANCES = ("none", "gradient_norm")  # guider_kd_balance: trainer.guider
KD_WEIGHT_AUTO = "auto"  # guider_kd_weight: trainer.guider (the word it takes besides a number >= 0)
SPLIT_SCORES = ("logsigmoid", "rank", "bpr")  # guider_split_score: trainer.guider_ops
THRESHOLD_MODES = ("quantile", "absolute")  # guider_threshold_mode: trainer.guider_ops
ROW_TRANSFORMS = ("center", "zscore", "softmax", "raw")  # guider_kd_transform: trainer.guider_ops

# models (recbole_mm.model)
DCT_MODES = ("1d", "2d", "none")  # dct_mode: model.layers (the keys of its _DCT_TRANSFORMS)
CF_MODELS = ("lightgcn", "mf")  # cf_model: model.lattice, model.lgmrec
ADJACENCY_NORMS = ("random_walk", "symmetric")  # adjacency_norm: model.lattice (the keys of its ADJACENCY_NORMS)
SSL_TASKS = ("FAC",)  # ssl_task: model.slmrec
FUSIONS = ("pid", "synergy", "weighted", "concat", "pooling")  # fusion: model.vlif
EDGE_PRUNINGS = ("alternate", "degree", "random")  # edge_pruning: model.layergcn
PGL_MODES = ("local", "global")  # mode: model.pgl
MMGCF_FUSION_MODES = ("mean", "sum", "concat")  # fusion_mode: model.mmgcf
MMGCF_WEIGHTINGS = ("equal", "alpha", "normalized")  # weighting: model.mmgcf
