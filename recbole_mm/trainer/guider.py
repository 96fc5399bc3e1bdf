r"""``GUIDERTrainer``: train any general model as the student of a denoised ID teacher.

GUIDER (Teach Me How to Denoise, WSDM 2025, §4, Algorithm 1). Before the student's first
epoch the teacher trains alone for ``guider_teacher_pretrain_epochs`` epochs (steps 1–2 below);
then, per epoch:

1. **Teacher update** (``guider_teacher``, LightGCN by default, its own AdamW optimiser): one
   pass over the train loader, its batches merged to ``guider_teacher_batch_size`` rows. On
   the current split it minimises ``guider_bpr_weight`` · BPR (u, i ∈ I_true, j a sampled
   unobserved item) + ``guider_dbpr_weight`` · DBPR (Eq. 7: u, i ∈ I_true, j ∈ I_false(u),
   one j drawn per row); the interactions of I_false leave the BPR term. Before the first
   calibration, and with ``guider_dbpr: false`` (GUIDER−DBPR), plain BPR on all train
   interactions.
2. **AMSC calibration** every ``guider_calibrate_every`` teacher epochs from teacher epoch
   ``guider_warmup_epochs`` on (Eq. 2–6, see :mod:`~recbole_mm.trainer.guider_ops`): the
   per-interaction teacher loss (``guider_split_score``, deterministic), the per-user mean
   split into reliable / spurious, and the modality recalibration on
   :math:`S(i, i') = \max(\cos_t, \cos_v) \cdot S_{conf}(i)` against
   :math:`S_{thres}` (``guider_threshold``, a quantile of the suspects' S by default so that
   one value transfers across datasets). ``guider_amsc: false`` keeps the loss split alone.
   With ``noise_ratio`` > 0 each calibration logs the precision and recall with which
   I_false catches the injected pairs (kept in :attr:`GUIDERTrainer.calibration_history`).
3. **Student update**: the model's own loss plus ``guider_kd_weight`` · L_KD (Eq. 8; times the
   batch's rows for a student whose loss is a sum over them, :func:`kd_scale`) between
   the teacher's and the student's score rows of the batch's users (at most
   ``guider_kd_users``, over every item or ``guider_kd_items`` drawn ones):
   ``guider_kd: matched`` (default) — each user's student row pulled onto the same user's
   teacher row (:func:`~recbole_mm.trainer.guider_ops.row_matched_kd`, the transport below with
   its plan fixed to the identity; level with it where its plan is diagonal, and it holds
   students whose plan never becomes diagonal, RecBole's BPR); ``ot`` — the debiased
   entropic OT between the two sets of rows (Eq. 9–15, POT's
   log-domain Sinkhorn, :func:`~recbole_mm.trainer.guider_ops.row_transport_kd`), as the
   authors' compiled trainer does; ``kl`` — per-row softmax KL over the items (the authors'
   HEAD); ``ot_pairs`` — OT between scalar pair logits (the literal reading of the equations,
   an ablation); ``none``. The student's rows come from ``score_rows`` (gradient-carrying, on
   the evaluation graph; forward passes are memoised within a batch, and one pass serves the
   loss and the KD rows where the two graphs are the same computation), the teacher's from
   its representations computed once per epoch, without gradient. Each epoch logs the mean
   KD value and the plan's diagonal mass (:attr:`GUIDERTrainer.kd_history`).

   The two losses are weighed by ``guider_weighting``: ``fixed`` (L_rec + w L_KD) or ``mgda``
   (the authors' trainer: per batch, w_s L_rec + w·w_kd L_KD with (w_s, w_kd) the two-task
   min-norm solution on the two gradients over the student's parameters, clamped to
   w_s ≥ 0.5, w_kd ≥ 1e-4, :func:`~recbole_mm.trainer.guider_ops.mgda_weights`;
   ``guider_mgda_sum_quirk`` reproduces their missing ``zero_grad``). w is
   ``guider_kd_weight``: a number, or ``auto`` (the default, a deviation from the paper's
   w = 1): the teacher is scored on valid at every evaluation and w, starting at
   ``guider_kd_start`` (1), is multiplied by ``guider_kd_decay`` at each evaluation where the
   student's best valid score has reached the teacher's, down to 0, after which the teacher
   is no longer trained (:class:`~recbole_mm.trainer.guider_ops.SafeKDWeight`): a student
   stronger than its teacher is not held at the teacher's level. ``guider_kd_retry``: a
   student that trailed its teacher at every evaluation is trained again from the same start
   with w starting at that number, and the better run on valid is kept
   (:meth:`GUIDERTrainer.retry_with_stronger_pull`).

   ``guider_fallback`` (default on): after GUIDER's run the student is trained alone from the
   same initial weights, on the same budget and early stopping, and the better of the two on
   valid is the run's result and checkpoint (:meth:`GUIDERTrainer.fall_back_to_plain`). It
   costs one plain run and makes ``guider: true`` never worse than the plain model on valid,
   whatever the student; ``false`` for GUIDER's own numbers.

Evaluation concerns the student only (``guider_eval_teacher`` also scores the teacher at each
evaluation). A checkpoint holds the student and, under ``"guider"``, the trainer's own state (the
teacher and its optimiser, teacher epochs, I_false, the KD weight and its schedule):
``resume_checkpoint`` goes on from there without pre-training the teacher again. Every student must be a general model with pairwise
(u, i⁺, i⁻) training data, or with positive-only (u, i) batches (``train_neg_sample_args`` off,
as BM3 trains): the teacher and ``ot_pairs`` then draw one negative per row themselves, as
MMRec's sampler does (uniform over the items seen in training, redrawn while the user has
interacted with it; :meth:`GUIDERTrainer.negatives`). The teacher must return (user, item)
representations from ``forward()`` (LightGCN, NGCF, the plugin's models, ...).
"""
import copy
import os
import random
import time
from logging import getLogger

import numpy as np
import torch
from recbole.data.interaction import Interaction, cat_interactions
from recbole.utils import InputType, calculate_valid_score, set_color

from recbole_mm import collectives
from recbole_mm.config import Config
from recbole_mm.errors import ConfigError
from recbole_mm.options import GUIDER_WEIGHTINGS, KD_BALANCES, KD_MODES, KD_WEIGHT_AUTO
from recbole_mm.trainer import guider_ops as ops
from recbole_mm.trainer.trainer import MultiModalTrainer, build_optimizer
from recbole_mm.utils import get_model


def kd_scale(model, interaction):
    """The factor on L_KD that puts it on the student loss's scale: the batch's rows for a
    student whose loss mostly sums over them (``loss_reduction = "sum"``: LayerGCN, MVGAE, SelfCF), else 1.
    RecBole's own models average (``BPRLoss``)."""
    return len(interaction) if getattr(model, "loss_reduction", "mean") == "sum" else 1


def _drop_full_sort_cache(model):
    """Forget the user / item vectors RecBole's own models (LightGCN, ...) keep between
    ``full_sort_predict`` calls, stale once their weights change outside training."""
    for cache in ("restore_user_e", "restore_item_e"):
        if hasattr(model, cache):
            setattr(model, cache, None)


def torch_random_state(device):
    """torch's generators: {"torch": the CPU state, "cuda": the device's state when it is a GPU, else None}."""
    device = torch.device(device)
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


class _MemoisedForward:
    """Within a ``with`` block, ``model.forward()`` (no arguments) runs once per graph mode
    (training graph, or the full graph of ``score_rows``) and is reused: the loss and the KD
    scores then share forward passes (and autograd graphs). One pass serves both modes when
    they are the same computation: the model has no pruned training graph
    (``scoring_changes_forward``) and its first pass drew no random numbers (no dropout, no
    sampled edges): DRAGON and its kin then pay one forward per batch under GUIDER, not two."""

    def __init__(self, model):
        self.model = model
        self.results = {}
        self.stochastic = False

    def _key(self):
        scoring = bool(getattr(self.model, "scoring_graph", False))
        changes = getattr(self.model, "scoring_changes_forward", None)
        same_computation = changes is not None and not changes() and not self.stochastic
        return False if same_computation else scoring

    def __enter__(self):
        original = type(self.model).forward
        device = getattr(self.model, "device", "cpu")

        def forward(*args, **kwargs):
            if args or kwargs:
                return original(self.model, *args, **kwargs)
            key = self._key()
            if key not in self.results:
                before = torch_random_state(device)
                self.results[key] = original(self.model)
                after = torch_random_state(device)
                self.stochastic |= any(state is not None and not torch.equal(state, after[name])
                                       for name, state in before.items())
            return self.results[key]

        self.model.forward = forward
        return self

    def __exit__(self, *exc):
        del self.model.forward
        self.results = {}
        self.stochastic = False
        return False


def random_streams(train_data, device):
    """The state of every random stream a training run draws from: torch's (CPU, and the
    device's when it is a GPU), numpy's (RecBole's negative sampler), Python's and the train
    loader's own generator (its shuffles)."""
    return {**torch_random_state(device), "numpy": np.random.get_state(), "python": random.getstate(),
            "loader": train_data.generator.get_state() if getattr(train_data, "generator", None) is not None else None}


def restore_random_streams(state, train_data, device):
    """Set every stream :func:`random_streams` read back to the state it returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))
    if state["loader"] is not None:
        train_data.generator.set_state(state["loader"])


class GUIDERTrainer(MultiModalTrainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        # positive-only batches (BM3): the teacher draws its own negatives (see negatives())
        self.draws_negatives = config["train_neg_sample_args"]["distribution"] == "none"
        if model.input_type != InputType.PAIRWISE and not self.draws_negatives:
            raise ConfigError(f"GUIDER needs a pairwise (u, i+, i-) student or positive-only batches; "
                             f"{type(model).__name__} is {model.input_type.name.lower()} with negative sampling")
        self.kd_mode = self._choice("guider_kd", KD_MODES, "none")
        self.kd_weight_auto = config["guider_kd_weight"] == KD_WEIGHT_AUTO
        self.kd_schedule = None
        if self.kd_weight_auto:
            self.kd_schedule = ops.SafeKDWeight(start=config["guider_kd_start"], decay=config["guider_kd_decay"])
            self.kd_weight = self.kd_schedule.weight
        else:
            self.kd_weight = float(config["guider_kd_weight"] if config["guider_kd_weight"] is not None else 1.0)
        self.weighting = self._choice("guider_weighting", GUIDER_WEIGHTINGS, "fixed")
        self.mgda_sum_quirk = bool(config["guider_mgda_sum_quirk"])
        self.kd_balance = self._choice("guider_kd_balance", KD_BALANCES, "none")
        self._balance_scale = None  # guider_kd_balance: gradient_norm: this epoch's |g_rec| / |g_KD|
        self._student_parameters = None
        self.kd_retry = config["guider_kd_retry"] if self.kd_weight_auto else None
        self.retry_history = None  # {"first": best valid score, "retry": ..., "kept": "first" | "retry"}
        self.fallback = bool(config["guider_fallback"])
        self.fallback_z = float(config["guider_fallback_z"] or 0.0)
        if self.fallback_z < 0:
            raise ConfigError(f"guider_fallback_z must be >= 0, got {config['guider_fallback_z']!r}")
        self.fallback_test = None  # the paired test's mean difference and standard error (guider_fallback_z > 0)
        self._alone = False  # the fallback's run: the student's own loss, no teacher, no KD schedule
        self.fallback_history = None  # {"guider": best valid score, "plain": ..., "kept": ..., + fallback_test}
        self.kd_pairs = config["guider_kd_pairs"]
        self.kd_users = int(config["guider_kd_users"] or 0)
        self.kd_items = int(config["guider_kd_items"] or 0)
        self.kd_transform = self._choice("guider_kd_transform", ops.ROW_TRANSFORMS, "zscore")
        self.sinkhorn_reg = config["guider_sinkhorn_reg"]
        self.sinkhorn_iterations = config["guider_sinkhorn_iterations"]
        self.use_dbpr = bool(config["guider_dbpr"])
        self.use_amsc = bool(config["guider_amsc"])
        self.threshold = config["guider_threshold"]
        self.threshold_mode = self._choice("guider_threshold_mode", ops.THRESHOLD_MODES, "quantile")
        self.split_score = self._choice("guider_split_score", ops.SPLIT_SCORES, "logsigmoid")
        self.calibrate_every = max(1, int(config["guider_calibrate_every"]))
        self.warmup_epochs = max(0, int(config["guider_warmup_epochs"] or 0))
        self.logger = getLogger()
        self.teacher = None
        self._resumed_state = None  # the "guider" part of a resumed checkpoint, applied once the teacher exists
        self.false_keys = None  # sorted keys of I_false (None before the first calibration)
        self.calibration_history = []
        self.teacher_epochs = 0  # teacher epochs trained so far, pre-training included
        self._teacher_embeddings = None
        self.epoch_seconds = []  # per epoch: seconds of the teacher, calibration and student phases
        self.kd_history = []  # per epoch: mean KD value and plan diagonal mass
        self.teacher_results = []  # with guider_eval_teacher: the teacher's result at each evaluation
        self._kd_epoch = []
        self._mgda_epoch = []  # per batch under guider_weighting: mgda: (w_student, w_kd)

    def _choice(self, key, choices, default):
        """``config[key]`` (``default`` when unset), which must be one of ``choices``."""
        value = self.config[key] or default
        if value not in choices:
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value

    def _build_optimizer(self, **kwargs):
        """The student's optimiser: ``guider_student_learner`` / ``guider_student_weight_decay``
        when set (the paper trains with AdamW), else the model's ``learner`` / ``weight_decay``;
        built with ``optimizer_impl`` (fused by default) by the parent's ``_build_optimizer``."""
        if self.config["guider_student_learner"]:
            kwargs.setdefault("learner", self.config["guider_student_learner"])
        if self.config["guider_student_weight_decay"] is not None:
            kwargs.setdefault("weight_decay", self.config["guider_student_weight_decay"])
        return super()._build_optimizer(**kwargs)

    # ------------------------------------------------------------------ setup
    def _teacher_config(self):
        """The student's config with the teacher's model name, its defaults and
        ``guider_teacher_config`` overrides."""
        keep = ("data_path", "checkpoint_dir", "device", "use_gpu", "gpu_id", "seed", "reproducibility", "state",
                "embedding_size", "synthetic_generator", "show_progress")
        config_dict = {key: self.config[key] for key in keep if self.config[key] is not None}
        config_dict["cache_dir"] = self.config["cache_dir"]  # None (no disk cache) included
        config_dict.update(self.config["guider_teacher_config"] or {})
        config_dict["guider"] = False
        config = Config(self.config["guider_teacher"], self.config["dataset"], config_dict=config_dict)
        config["data_path"] = self.config["data_path"]  # Config appends the dataset name again
        return config

    def _setup(self, train_data):
        """Build the teacher and the modality side of AMSC on the student's train split."""
        if self.teacher is not None:
            return
        dataset = train_data._dataset
        teacher_config = self._teacher_config()
        teacher_config["device"] = self.device
        self.teacher = get_model(self.config["guider_teacher"])(teacher_config, dataset).to(self.device)
        collectives.broadcast_module(self.teacher, self.config)  # distributed: rank 0's teacher everywhere
        lr = self.config["guider_teacher_learning_rate"] or self.config["learning_rate"]
        self.teacher_optimizer = build_optimizer("adamw", self.teacher.parameters(),
                                                 self.config["optimizer_impl"] or "fused", lr=lr,
                                                 weight_decay=self.config["guider_teacher_weight_decay"])
        self.n_items = dataset.item_num
        self.n_users = dataset.user_num
        feat = dataset.inter_feat
        self.train_users = feat[dataset.uid_field].to(self.device)
        self.train_items = feat[dataset.iid_field].to(self.device)
        injected = getattr(dataset, "injected_pairs", None)
        self.injected_keys = None if injected is None else torch.as_tensor(np.asarray(injected), device=self.device)
        if self.draws_negatives:
            self.negative_candidates = torch.unique(self.train_items)
            self.train_keys = torch.sort(self.train_users * self.n_items + self.train_items).values
        self._setup_modalities(dataset)
        if self._resumed_state is not None:
            self.load_guider_state(self._resumed_state)
            self._resumed_state = None
        self.logger.info(f"GUIDER: teacher {type(self.teacher).__name__}, KD {self.kd_mode}, DBPR {self.use_dbpr}, "
                         f"AMSC {self.use_amsc}, {len(self.train_users)} train interactions")

    def _setup_modalities(self, dataset):
        """L2-normalised text/vision features for S_modal and the hash confidence S_conf.

        Under ``guider_amsc`` every modality named in ``guider_modalities`` must be in the
        dataset (a clear error otherwise). With one modality, S_modal is its cosine alone and
        S_conf = 1 (there is no second modality to hash against): a documented fallback that
        logs a warning. ``guider_hash_confidence: false`` sets S_conf = 1 too: S_conf is a
        property of the item, not of the interaction, and on the bundled dataset with 10%
        injected noise it ranks injected pairs no better than chance (AUC 0.52), while
        multiplying it in lowers the AUC of S among the suspects from 0.73 to 0.65."""
        features = getattr(dataset, "modality_features", {}) or {}
        wanted = list(self.config["guider_modalities"] or [])
        if self.use_amsc:
            missing = [name for name in wanted if name not in features]
            if missing or not wanted:
                raise ConfigError(
                    f"GUIDER's AMSC needs the modalities in guider_modalities {wanted}; dataset "
                    f"'{self.config['dataset']}' " + (f"lacks {missing} " if missing else "")
                    + f"(it has {sorted(features)}). Set guider_modalities to the dataset's modalities, "
                    "or guider_amsc: false to keep the loss split alone.")
            if len(wanted) == 1:
                self.logger.warning(f"GUIDER: one modality in guider_modalities ({wanted[0]}): S_modal is its "
                                    "cosine alone")
        names = [name for name in wanted if name in features]
        if self.config["guider_hash_confidence"] and len(names) < 2:
            self.logger.warning(f"GUIDER: guider_hash_confidence: true hashes two modalities against each other, "
                                f"but guider_modalities gives {names} here: the cross-modal hash confidence "
                                "S_conf (Eq. 6) is dropped (S_conf = 1)")
        self.modalities = [torch.nn.functional.normalize(features[name].float(), dim=1).to(self.device)
                           for name in names]
        if len(names) >= 2 and self.config["guider_hash_confidence"]:
            text, image = features[names[0]].float(), features[names[1]].float()
            params = ops.fit_cross_modal_hash(text[1:], image[1:], self.config["guider_hash_bits"],
                                              self.config["guider_cca_dims"])
            self.confidence = ops.hash_confidence(text, image, params).to(self.device)
        else:
            self.confidence = torch.ones(dataset.item_num, device=self.device)
        self.pair_similarity = None
        if self.use_amsc and self.modalities:
            self.pair_similarity = ops.UserPairSimilarity.build(self.train_users, self.modalities, self.train_items)

    # ------------------------------------------------------------------ checkpoints
    def guider_state(self):
        """What a resumed run needs beyond the student: the teacher (weights, optimiser, epochs),
        I_false and the KD weight with its schedule."""
        schedule = None if self.kd_schedule is None else dict(vars(self.kd_schedule))
        return {"teacher": None if self.teacher is None else self.teacher.state_dict(),
                "teacher_optimizer": None if self.teacher is None else self.teacher_optimizer.state_dict(),
                "teacher_epochs": self.teacher_epochs, "false_keys": self.false_keys,
                "kd_weight": self.kd_weight, "kd_schedule": schedule,
                "calibration_history": list(self.calibration_history)}

    def load_guider_state(self, state):
        """Restore :meth:`guider_state` into this trainer, whose teacher is built."""
        if state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
        self.teacher_epochs = state["teacher_epochs"]
        self.false_keys = None if state["false_keys"] is None else state["false_keys"].to(self.device)
        self.kd_weight = state["kd_weight"]
        if self.kd_schedule is not None and state["kd_schedule"] is not None:
            vars(self.kd_schedule).update(state["kd_schedule"])
        self.calibration_history = list(state["calibration_history"])

    def checkpoint_extras(self):
        """``"guider"``: :meth:`guider_state`, beside the student's checkpoint."""
        return {"guider": self.guider_state()}

    def resume_checkpoint(self, resume_file):
        """The student's resume; the GUIDER state is restored when ``fit`` has built the teacher
        (a checkpoint without it, e.g. of a plain run, starts GUIDER afresh)."""
        super().resume_checkpoint(resume_file)
        checkpoint = torch.load(str(resume_file), map_location="cpu", weights_only=False)
        self._resumed_state = checkpoint.get("guider")
        if self._resumed_state is not None and self.teacher is not None:
            self.load_guider_state(self._resumed_state)
            self._resumed_state = None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        # before the teacher draws anything: the fallback replays the plain run's random streams
        streams = random_streams(train_data, self.device) if self._fallback_due(valid_data) else None
        self._setup(train_data)
        start = None if streams is None else dict(self._training_state(), random_streams=streams)
        self.pretrain_teacher(train_data)
        retry = self._retry_start(train_data, valid_data)
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        if retry is not None and self.student_trailed_teacher():
            result = self.retry_with_stronger_pull(retry, result, train_data, valid_data, verbose, saved,
                                                   show_progress, callback_fn)
        if start is not None:
            result = self.fall_back_to_plain(start, result, train_data, valid_data, verbose, saved, show_progress,
                                             callback_fn)
        return result

    def _retry_start(self, train_data, valid_data):
        """``guider_kd_retry``: what a second GUIDER run starts from (the student's and the
        teacher's state after the teacher's pre-training, and the random streams), or None."""
        if not (self.kd_retry and self.kd_schedule is not None and self._fresh_run_with_valid(valid_data)):
            return None
        return dict(self._training_state(), guider=copy.deepcopy(self.guider_state()),
                    random_streams=random_streams(train_data, self.device))

    def student_trailed_teacher(self):
        """Whether the student's best valid score stayed below its teacher's at every evaluation
        of the run (the auto KD weight was never lowered)."""
        return bool(self.kd_schedule.history) and self.kd_schedule.weight == self.kd_schedule.start

    def retry_with_stronger_pull(self, retry, first_result, train_data, valid_data, verbose=True, saved=True,
                                 show_progress=False, callback_fn=None):
        """``guider_kd_retry``: the student trailed its teacher all run long, so GUIDER is trained
        again from the same start (student, teacher, I_false, random streams) with the auto KD
        weight starting at ``guider_kd_retry``; the run with the better best valid score (ties:
        the first) is kept, its checkpoint in :attr:`saved_model_file`, and goes on to the
        fallback. Why: the KD weight a student needs is its own. A student that learns slowly
        from its teacher (MENTOR, MMGCN, MMGCF, BM3 on the bundled dataset) gains 0.01-0.14 valid
        Recall@20 when the weight starts at 10, while one that outgrows its teacher under w = 1
        (VBPR, DRAGON, MGCN) loses 0.01-0.03 under it; the second never trails its teacher all
        run long, so it never pays for the retry.

        Returns:
            (best valid score, best valid result) of the run kept.
        """
        first_score, _ = first_result
        first_start, first_guider = self.kd_schedule.start, self.guider_state()
        self.load_guider_state(retry["guider"])
        self.kd_schedule = ops.SafeKDWeight(start=self.kd_retry, decay=self.kd_schedule.decay,
                                            floor=self.kd_schedule.floor)
        self.kd_weight = self.kd_schedule.weight
        self._teacher_embeddings = None
        clock = time.perf_counter()
        (retry_score, retry_result), first = self._run_again(retry, "retry", train_data, valid_data, verbose, saved,
                                                             show_progress, callback_fn)
        sign = 1.0 if self.valid_metric_bigger else -1.0
        kept = "retry" if sign * retry_score > sign * first_score else "first"
        self.retry_history = {"first": float(first_score), "retry": float(retry_score), "kept": kept}
        self.logger.info(set_color("GUIDER ", "blue") + f"retry: the student trailed its teacher; best valid "
                         f"{first_score:.4f} with the KD weight from {first_start:g}, {retry_score:.4f} from "
                         f"{self.kd_retry:g} ({time.perf_counter() - clock:.1f} s): the "
                         + ("retry" if kept == "retry" else "first run") + " kept")
        if kept == "first":
            self.load_guider_state(first_guider)
        self._keep_run(first, kept == "retry", saved)
        return (retry_score, retry_result) if kept == "retry" else (first_score, self.best_valid_result)

    def _run_again(self, start, suffix, train_data, valid_data, verbose, saved, show_progress, callback_fn):
        """Put the run just finished aside and train the student again from ``start`` (its
        weights, optimiser, LR schedule and the random streams, as :meth:`_training_state` and
        :func:`random_streams` gave them) into the checkpoint ``<file>-<suffix>``, for the same
        budget and early stopping. Returns ((score, result) of the new run, the first run's
        record for :meth:`_keep_run`)."""
        first = {"file": self.saved_model_file, "state": None if saved else self._training_state(),
                 "best": (self.best_valid_score, self.best_valid_result, self.cur_step, dict(self.train_loss_dict))}
        root, extension = os.path.splitext(first["file"])
        self.saved_model_file = f"{root}-{suffix}{extension}"
        self._load_training_state(start)
        restore_random_streams(start["random_streams"], train_data, self.device)
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result, self.cur_step, self.start_epoch = None, 0, 0
        result = MultiModalTrainer.fit(self, train_data, valid_data, verbose, saved, show_progress, callback_fn)
        return result, first

    def _keep_run(self, first, keep_second, saved):
        """After :meth:`_run_again`: the kept run's checkpoint at the first run's file (the other
        deleted; rank 0 writes, every rank waits), its best score, result, step and losses in the
        trainer, its best weights in the model (its last ones when ``saved`` is off)."""
        second_file, self.saved_model_file = self.saved_model_file, first["file"]
        if saved and collectives.global_rank(self.config) == 0:
            if keep_second:
                os.replace(second_file, first["file"])
            elif os.path.exists(second_file):
                os.remove(second_file)
        collectives.barrier(self.config)
        if not keep_second:
            self.best_valid_score, self.best_valid_result, self.cur_step, self.train_loss_dict = first["best"]
        if saved:
            self.load_checkpoint()  # the kept run's best epoch
        elif not keep_second:
            self._load_training_state(first["state"])

    def _fresh_run_with_valid(self, valid_data):
        """A valid split with evaluations and a fresh (not resumed) run: what the fallback and
        the retry need to compare runs from one start."""
        return bool(valid_data and self.eval_step > 0 and self.start_epoch == 0)

    def _fallback_due(self, valid_data):
        return self.fallback and self._fresh_run_with_valid(valid_data)

    def fall_back_to_plain(self, start, guider_result, train_data, valid_data, verbose=True, saved=True,
                           show_progress=False, callback_fn=None):
        """``guider_fallback``: the student alone, from the weights, optimiser and schedule it
        started GUIDER with and the random streams as they stood before the teacher was built
        (so it is, draw for draw, the run ``guider: false`` gives), for the same ``epochs`` and
        early stopping; then the run with the better best valid score is kept: its checkpoint
        in :attr:`saved_model_file`, its best weights in the model (its last ones when ``saved``
        is off), its (score, result) returned. Which run is kept: :meth:`_run_to_keep` (under the
        packaged ``guider_fallback_z: 2``, GUIDER's only when it is clearly better on valid).

        Why: whether a teacher helps a given student is known only by trying. A teacher weaker
        than its student pulls it down, and no early signal told which students those are on the
        bundled dataset: MGCN is ahead under KD at epoch 3 (valid Recall@20 0.12 against 0.07
        alone) and behind at epoch 30 (0.317 against 0.340), after the auto weight has released
        it. One plain run is the price of ``guider: true`` never being worse on valid.

        Returns:
            (best valid score, best valid result) of the run kept.
        """
        guider_score, _ = guider_result
        self._alone = True
        clock = time.perf_counter()
        try:
            (plain_score, plain_result), first = self._run_again(start, "alone", train_data, valid_data, verbose,
                                                                 saved, show_progress, callback_fn)
        finally:
            self._alone = False
        kept = self._run_to_keep(guider_score, plain_score, valid_data, first["file"], self.saved_model_file, saved)
        self.fallback_history = {"guider": float(guider_score), "plain": float(plain_score), "kept": kept,
                                 **(self.fallback_test or {})}
        self.logger.info(set_color("GUIDER ", "blue") + f"fallback: best valid {guider_score:.4f} under GUIDER, "
                         f"{plain_score:.4f} alone ({time.perf_counter() - clock:.1f} s): "
                         + ("GUIDER's student kept" if kept == "guider" else "the student alone kept"))
        self._keep_run(first, kept == "plain", saved)
        return (plain_score, plain_result) if kept == "plain" else (guider_score, self.best_valid_result)

    def _run_to_keep(self, guider_score, plain_score, valid_data, guider_file, alone_file, saved):
        """``"guider"`` or ``"plain"``. With ``guider_fallback_z`` > 0 and a top-k valid metric,
        both runs' best checkpoints are evaluated again on valid and GUIDER's is kept only when
        it beats the student alone by more than z standard errors of the per-user difference
        (:func:`~recbole_mm.trainer.guider_ops.clearly_better`); else (z = 0, another metric,
        or no checkpoints) the better best valid score, ties to GUIDER."""
        sign = 1.0 if self.valid_metric_bigger else -1.0
        by_score = "plain" if sign * plain_score > sign * guider_score else "guider"
        if self.fallback_z <= 0 or not saved:
            return by_score
        guider_values = self._per_user_valid(valid_data, guider_file)
        plain_values = self._per_user_valid(valid_data, alone_file)
        if guider_values is None or plain_values is None or len(guider_values) != len(plain_values):
            return by_score
        mean, standard_error = ops.paired_difference(guider_values, plain_values)
        self.fallback_test = {"mean_difference": mean, "standard_error": standard_error}
        better = ops.clearly_better(sign * guider_values, sign * plain_values, self.fallback_z)
        return "guider" if better else "plain"

    def _per_user_valid(self, valid_data, model_file):
        """Each valid user's value of the valid metric under the checkpoint ``model_file``, or
        None when the metric is not a top-k one."""
        captured, evaluate = [], self.evaluator.evaluate
        self.evaluator.evaluate = lambda struct: captured.append(struct) or evaluate(struct)
        try:
            MultiModalTrainer.evaluate(self, valid_data, load_best_model=True, model_file=model_file)  # no teacher
        finally:
            self.evaluator.evaluate = evaluate
        return ops.per_user_metric(self.evaluator, captured[-1], self.valid_metric) if captured else None

    def _training_state(self):
        """A copy of the student's weights (and other parameters), optimiser and LR schedule."""
        return copy.deepcopy({"model": self.model.state_dict(), "other": self.model.other_parameter(),
                              "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()})

    def _load_training_state(self, state):
        self.model.load_state_dict(state["model"])
        self.model.load_other_parameter(state["other"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.model.train()  # drops the plugin models' evaluation cache
        _drop_full_sort_cache(self.model)

    def pretrain_teacher(self, train_data):
        """``guider_teacher_pretrain_epochs`` teacher epochs (with their calibrations, on the
        same schedule) before the student's first epoch. Algorithm 1 trains both from scratch
        together; then the student distils for its first epochs from a teacher weaker than
        itself, and a student that learns faster than the teacher (FREEDOM on the bundled
        dataset: best valid Recall@20 0.20 at epoch 11 under GUIDER, against 0.28 alone)
        early-stops before the teacher has caught up."""
        clock = time.perf_counter()
        while self.teacher_epochs < int(self.config["guider_teacher_pretrain_epochs"] or 0):
            self.teacher_phase(train_data)
        if self.teacher_epochs:
            self.logger.info(f"GUIDER: teacher pre-trained for {self.teacher_epochs} epochs in "
                             f"{time.perf_counter() - clock:.1f} s")

    # ------------------------------------------------------------------ epoch
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._setup(train_data)
        if self._alone or (self.kd_weight_auto and not self.kd_weight):  # the student alone
            return super()._train_epoch(train_data, epoch_idx, None, show_progress)
        teacher_loss, seconds = self.teacher_phase(train_data)
        clock = time.perf_counter()
        self.teacher.eval()
        with torch.no_grad():
            self._teacher_embeddings = tuple(t.detach() for t in self.teacher.forward())
        self._balance_scale = None
        student_loss = super()._train_epoch(train_data, epoch_idx, self._student_loss, show_progress)
        seconds["student"] = time.perf_counter() - clock
        self._log_distillation(epoch_idx)
        self.epoch_seconds.append(seconds)
        self.logger.info(f"GUIDER epoch {epoch_idx}: teacher loss {teacher_loss:.4f}; seconds "
                         + ", ".join(f"{name} {value:.2f}" for name, value in seconds.items()))
        return student_loss

    def teacher_phase(self, train_data):
        """Algorithm 1, lines 2–5: one teacher epoch, then the AMSC split when one is due
        (counted in teacher epochs, pre-training included).

        Returns:
            (teacher loss, dict phase -> seconds).
        """
        clock = time.perf_counter()
        teacher_loss = self._train_teacher(train_data)
        seconds = {"teacher": time.perf_counter() - clock}
        if self.calibration_due(self.teacher_epochs):
            clock = time.perf_counter()
            self.calibrate()
            seconds["calibration"] = time.perf_counter() - clock
        self.teacher_epochs += 1
        return teacher_loss, seconds

    def calibration_due(self, epoch_idx):
        """From teacher epoch ``guider_warmup_epochs`` (counted from 0) on, every
        ``guider_calibrate_every`` epochs: the per-user loss split (Eq. 2) needs a teacher
        that has begun to fit, or the first I_false is close to random and DBPR then trains on
        it (on the bundled dataset with 10% noise, a split after the first teacher epoch
        catches injected pairs at 1.9x the injection rate after 20 epochs; after 5 warm-up
        epochs, at 2.2x)."""
        since = epoch_idx - self.warmup_epochs
        return since >= 0 and since % self.calibrate_every == 0

    def _train_teacher(self, train_data):
        self.teacher.train()
        total = 0.0
        hook = getattr(self.teacher, "pre_epoch_processing", None)
        if callable(hook):
            with collectives.same_random_state(self.config, -1 - self.teacher_epochs):
                hook()
        for interaction in self._teacher_batches(train_data):
            interaction = interaction.to(self.device)
            self.teacher_optimizer.zero_grad()
            loss = self.teacher_loss(interaction)
            loss.backward()
            collectives.average_gradients(self.teacher, self.config)  # distributed: as DDP does
            self.teacher_optimizer.step()
            total += loss.item()
        return total

    def _teacher_batches(self, train_data):
        """The student's train batches merged until each holds ``guider_teacher_batch_size``
        rows: the teacher propagates over the whole graph at every step, so fewer, larger
        steps make its epoch cheaper."""
        target = self.config["guider_teacher_batch_size"] or 0
        pending, rows = [], 0
        for interaction in train_data:
            pending.append(interaction)
            rows += len(interaction)
            if rows >= target:
                yield pending[0] if len(pending) == 1 else cat_interactions(pending)
                pending, rows = [], 0
        if pending:
            yield pending[0] if len(pending) == 1 else cat_interactions(pending)

    def teacher_loss(self, interaction):
        """DBPR on (u, i ∈ I_true, j ∈ I_false) + BPR on (u, i ∈ I_true, sampled j); plain BPR
        on every row before the first calibration or without DBPR."""
        model = self.teacher
        users = interaction[model.USER_ID]
        positives, negatives = interaction[model.ITEM_ID], self.negatives(interaction)
        user_all, item_all = model.forward()
        user_e = user_all[users]
        pos = (user_e * item_all[positives]).sum(-1)
        neg = (user_e * item_all[negatives]).sum(-1)
        if not self.use_dbpr or self.false_keys is None:
            return -torch.nn.functional.logsigmoid(pos - neg).mean()
        clean = ~ops.key_membership(users, positives, self.false_keys, self.n_items)
        bpr = -(torch.nn.functional.logsigmoid(pos - neg) * clean).sum() / clean.sum().clamp_min(1)
        noisy_items, has_noisy = ops.sample_from_sets(users, self.false_keys, self.n_items)
        rows = clean & has_noisy
        noisy = (user_e * item_all[noisy_items]).sum(-1)
        dbpr = -(torch.nn.functional.logsigmoid(pos - noisy) * rows).sum() / rows.sum().clamp_min(1)
        return self.config["guider_bpr_weight"] * bpr + self.config["guider_dbpr_weight"] * dbpr

    def negatives(self, interaction):
        """The batch's negative items (B,): its own, or, for positive-only batches (BM3), one
        per row drawn uniformly from the items seen in training and redrawn while the user has
        interacted with it in training (MMRec's sampler; the held-out items of a cold-start
        split are never drawn) — :func:`~recbole_mm.trainer.guider_ops.sample_unobserved`."""
        if self.model.NEG_ITEM_ID in interaction:
            return interaction[self.model.NEG_ITEM_ID]
        return ops.sample_unobserved(interaction[self.model.USER_ID], self.negative_candidates, self.train_keys,
                                     self.n_items)

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """The student's evaluation; with ``guider_eval_teacher`` the teacher (as it is now) is
        evaluated on the same data too, its result logged and kept in
        :attr:`teacher_results`."""
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if self.config["guider_eval_teacher"] and self.teacher is not None and eval_data is not None:
            self.evaluate_teacher(eval_data, show_progress)
        return result

    def evaluate_teacher(self, eval_data, show_progress=False):
        """The teacher's result on ``eval_data`` as it is now (logged, kept in :attr:`teacher_results`)."""
        student = self.model
        _drop_full_sort_cache(self.teacher)
        try:
            self.model = self.teacher
            teacher_result = MultiModalTrainer.evaluate(self, eval_data, load_best_model=False,
                                                        show_progress=show_progress)
        finally:
            self.model = student
        self.teacher_results.append(teacher_result)
        self.logger.info(set_color("GUIDER teacher ", "blue") + str({k: float(v) for k, v in teacher_result.items()}))
        return teacher_result

    def _valid_epoch(self, valid_data, show_progress=False):
        """RecBole's validation; under ``guider_kd_weight: auto`` the teacher is scored on the same
        split and the KD weight updated (:class:`~recbole_mm.trainer.guider_ops.SafeKDWeight`)."""
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress)
        if self._alone:
            return valid_score, valid_result
        if self.kd_schedule is not None and self.kd_weight and self.teacher is not None:
            teacher_result = (self.teacher_results[-1] if self.config["guider_eval_teacher"]
                              else self.evaluate_teacher(valid_data, show_progress))
            teacher_score = calculate_valid_score(teacher_result, self.valid_metric)
            before = self.kd_weight
            self.kd_weight = self.kd_schedule.update(valid_score, teacher_score, self.valid_metric_bigger)
            if self.kd_weight != before:
                self.logger.info(set_color("GUIDER ", "blue") + f"KD weight {before:g} -> {self.kd_weight:g} (student "
                                 f"valid {valid_score:.4f}, best {self.kd_schedule.best:.4f}, teacher {teacher_score:.4f})")
        return valid_score, valid_result

    # ------------------------------------------------------------------ AMSC
    @torch.no_grad()
    def calibrate(self):
        """Recompute I_true / I_false from the teacher (Eq. 2–6) and log the diagnostics."""
        self.teacher.eval()
        user_all, item_all = self.teacher.forward()
        losses = ops.per_interaction_loss(user_all, item_all, self.train_users, self.train_items, self.split_score,
                                          self.config["guider_loss_negatives"])
        reliable = ops.loss_split(self.train_users, losses, self.n_users)
        clean = reliable
        if self.use_amsc and self.modalities:
            clean = ops.amsc_split(self.train_users, self.train_items, reliable, self.modalities, self.confidence,
                                   self.threshold, self.n_users, self.threshold_mode, pairs=self.pair_similarity)
        noisy = collectives.broadcast_tensor(~clean, self.config)  # distributed: rank 0's split everywhere
        keys = self.train_users[noisy] * self.n_items + self.train_items[noisy]
        self.false_keys = torch.sort(keys).values
        record = {"false": int(noisy.sum()), "spurious": int((~reliable).sum()), "interactions": len(clean)}
        if self.injected_keys is not None:
            injected = ops.key_membership(self.train_users, self.train_items, self.injected_keys, self.n_items)
            caught = int((injected & noisy).sum())
            record.update(injected=int(injected.sum()), caught=caught,
                          precision=caught / max(record["false"], 1), recall=caught / max(int(injected.sum()), 1))
        self.calibration_history.append(record)
        message = (f"AMSC: I_false {record['false']} of {record['interactions']} "
                   f"(loss split: {record['spurious']} spurious)")
        if "precision" in record:
            message += (f"; injected noise caught: precision {record['precision']:.4f}, "
                        f"recall {record['recall']:.4f} ({record['injected']} injected)")
        self.logger.info(set_color("GUIDER ", "blue") + message)
        return record

    # ------------------------------------------------------------------ student
    def _student_loss(self, interaction):
        model = self.model
        with _MemoisedForward(model):
            loss = model.calculate_loss(interaction)
            if isinstance(loss, tuple):
                loss = sum(loss)
            if self.kd_mode == "none" or not self.kd_weight:
                return loss
            kd = self.distillation_loss(interaction) * kd_scale(model, interaction)
            if self.kd_balance == "gradient_norm":
                kd = kd * self.balance_scale(loss, kd)
            if self.weighting == "mgda":
                w_student, w_kd = self.mgda_weights(loss, kd)
                return w_student * loss + self.kd_weight * w_kd * kd
            return loss + self.kd_weight * kd

    def student_parameters(self):
        if self._student_parameters is None:
            self._student_parameters = [p for p in self.model.parameters() if p.requires_grad]
        return self._student_parameters

    def balance_scale(self, loss, kd):
        """``guider_kd_balance: gradient_norm``: max(1, |∇L_rec| / |∇L_KD|) over the student's
        parameters, measured on the epoch's first batch and kept for its other batches (a
        float: no gradient flows through it). w = 1 then pulls at least as hard as the
        student's own loss, whatever the scale of either (a summed loss, a model whose scores
        move little under L_KD). Never below 1: RecBole's LightGCN starts with a KD gradient
        200-300 times its BPR's, and scaling it down to BPR's lost 0.055 valid Recall@20."""
        if self._balance_scale is None:
            parameters = self.student_parameters()
            rec_norm = ops.flat_gradient(loss, parameters).norm().item()
            kd_norm = ops.flat_gradient(kd, parameters).norm().item()
            self._balance_scale = max(1.0, rec_norm / kd_norm) if kd_norm > 0 else 1.0
        return self._balance_scale

    def mgda_weights(self, loss, kd):
        """``guider_weighting: mgda``: the batch's (w_student, w_kd) from the two losses' gradients
        over the student's parameters (:func:`~recbole_mm.trainer.guider_ops.mgda_weights`;
        ``guider_mgda_sum_quirk``: the authors' second gradient, the sum of both)."""
        parameters = self.student_parameters()
        weights = ops.mgda_weights(ops.flat_gradient(loss, parameters), ops.flat_gradient(kd, parameters),
                                   sum_quirk=self.mgda_sum_quirk)
        self._mgda_epoch.append(weights)
        return weights

    def distillation_loss(self, interaction):
        """L_KD on the batch (Eq. 8–15): between the teacher's and the student's score rows of
        the batch users (``ot``, ``kl``), or between the pair logits of ``guider_kd_pairs``
        rows (``ot_pairs``)."""
        diagonal = float("nan")
        if self.kd_mode == "ot_pairs":
            loss = self._pair_logit_transport(interaction)
        else:
            users, items = self.distillation_rows(interaction)
            student = self.student_score_rows(users, items)
            user_all, item_all = self._teacher_embeddings
            teacher = user_all[users] @ item_all[items].T
            if self.kd_mode == "kl":
                loss = ops.row_kl_kd(teacher, student)
            elif self.kd_mode == "matched":
                loss, diagonal = ops.row_matched_kd(teacher, student, self.kd_transform)
            else:
                loss, diagonal = ops.row_transport_kd(teacher, student, self.sinkhorn_reg, self.sinkhorn_iterations,
                                                      self.kd_transform)
        self._kd_epoch.append((loss.item(), diagonal))
        return loss

    def distillation_rows(self, interaction):
        """The batch's distinct users (at most ``guider_kd_users``, drawn without replacement)
        and the items their rows cover: every item, or ``guider_kd_items`` drawn uniformly
        per batch when the catalogue is larger (the padding item 0 never).

        Returns:
            (users (B,), items (N,)) int64 on the device.
        """
        users = torch.unique(interaction[self.model.USER_ID])
        if self.kd_users and len(users) > self.kd_users:
            users = users[torch.randperm(len(users), device=users.device)[: self.kd_users]]
        n_real = self.n_items - 1
        if self.kd_items and n_real > self.kd_items:
            items = torch.randperm(n_real, device=users.device)[: self.kd_items] + 1
        else:
            items = torch.arange(1, self.n_items, device=users.device)
        return users, items

    def student_score_rows(self, users, items):
        """The student's (B x N) scores with gradient: ``score_rows`` of the plugin's models,
        ``full_sort_predict`` in training mode for RecBole's own (they recompute it there)."""
        model = self.model
        if hasattr(model, "score_rows"):
            return model.score_rows(users, items)
        scores = model.full_sort_predict(Interaction({model.USER_ID: users}))
        return scores.view(len(users), -1)[:, items]

    def _pair_logit_transport(self, interaction):
        """``ot_pairs``: OT between the scalar pair logits of ``guider_kd_pairs`` rows."""
        model = self.model
        rows = torch.randperm(len(interaction), device=self.device)[: self.kd_pairs]
        users = interaction[model.USER_ID][rows]
        positives, negatives = interaction[model.ITEM_ID][rows], self.negatives(interaction)[rows]
        student = torch.nn.functional.logsigmoid(
            model.predict(Interaction({model.USER_ID: users, model.ITEM_ID: positives}))
            - model.predict(Interaction({model.USER_ID: users, model.ITEM_ID: negatives}))
        )
        user_all, item_all = self._teacher_embeddings
        teacher = ops.pairwise_logits(user_all[users], item_all[positives], item_all[negatives])
        return ops.sinkhorn_kd(teacher, student, self.sinkhorn_reg, self.sinkhorn_iterations)

    def _log_distillation(self, epoch_idx):
        """Mean KD value and plan diagonal mass of the epoch (kept in :attr:`kd_history`)."""
        if not self._kd_epoch:
            return
        values = np.array(self._kd_epoch, dtype=np.float64)
        record = {"epoch": epoch_idx, "kd": float(values[:, 0].mean()), "diagonal": float(np.nanmean(values[:, 1]))
                  if np.isfinite(values[:, 1]).any() else None, "kd_weight": self.kd_weight}
        if self._balance_scale is not None:
            record["balance_scale"] = self._balance_scale
        if self._mgda_epoch:
            record["w_student"], record["w_kd"] = (float(v) for v in np.mean(self._mgda_epoch, axis=0))
            self._mgda_epoch = []
        self.kd_history.append(record)
        self._kd_epoch = []
        message = f"GUIDER epoch {epoch_idx}: KD ({self.kd_mode}) {record['kd']:.5f}, weight {self.kd_weight:g}"
        if "w_student" in record:
            message += f", MGDA mean w_student {record['w_student']:.3f}, w_kd {record['w_kd']:.4f}"
        if "balance_scale" in record:
            message += f", gradient balance x{record['balance_scale']:.3g}"
        if record["diagonal"] is not None:
            message += f", plan diagonal mass {record['diagonal']:.3f}"
        self.logger.info(message)


__all__ = ["GUIDERTrainer"]
