"""``MultiModalTrainer``: RecBole's ``Trainer`` plus the per-epoch model hook and MMRec's
learning-rate schedule."""
import datetime
import inspect
import itertools
import logging
import os
import secrets

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch import optim
from torch.optim.lr_scheduler import LambdaLR

from recbole_mm import collectives
from recbole_mm.errors import ConfigError, RecboleMMError
from recbole_mm.files import atomic_torch_save
from recbole_mm.model.loss import DenoisingBPRLoss, install_denoising_loss
from recbole_mm.options import DENOISE_MODES, OPTIMIZER_IMPLS
from recbole_mm.trainer.bod import BOD
from recbole_mm.trainer.collector import MultiModalCollector
from recbole_mm.trainer.damrs_denoise import DAMRSDenoiser
from recbole_mm.utils import trains

TORCH_OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adagrad": optim.Adagrad,
                    "rmsprop": optim.RMSprop}


def fusable(params):
    """True when torch has a fused optimiser kernel for every tensor of ``params``: dense
    floating-point tensors on a device with fused kernels (CPU included since torch 2.4)."""
    try:
        from torch.optim.optimizer import _device_dtype_check_for_fused  # torch's own check (private)
    except ImportError:
        return False
    try:
        for param in params:
            if param.is_sparse:
                return False
            _device_dtype_check_for_fused(param)
    except RuntimeError:
        return False
    return True


def build_optimizer(learner, params, impl="fused", sparse_grads=False, **hyper):
    """``learner`` (adam | adamw | sgd | adagrad | rmsprop) over ``params`` with torch's
    ``impl`` implementation.

    Args:
        impl: ``fused`` (one kernel per step over all tensors; falls back to ``foreach``, with
            a debug log, where the optimiser has no fused kernel or the tensors do not fit one),
            ``foreach`` (tensors batched per operation) or ``single`` (a loop over tensors,
            the per-tensor loop), or ``recbole`` (torch's own choice, as RecBole builds its
            optimisers: the loop on the CPU, foreach on GPUs). All compute the same update, up to
            float rounding.
        sparse_grads: the model produces sparse gradients (``nn.Embedding(sparse=True)``),
            which fused kernels do not take.
        **hyper: the optimiser's keyword arguments (``lr``, ``weight_decay``, ...).
    """
    if impl not in OPTIMIZER_IMPLS:
        raise ConfigError(f"optimizer_impl must be one of {list(OPTIMIZER_IMPLS)}, got {impl!r}")
    optimizer_class = TORCH_OPTIMIZERS[learner.lower()]
    if impl == "recbole":
        return optimizer_class(params, **hyper)
    params = list(params)
    accepted = inspect.signature(optimizer_class).parameters
    if impl == "fused":
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        if "fused" in accepted and not sparse_grads and fusable(tensors):
            return optimizer_class(params, fused=True, **hyper)
        logging.getLogger().debug(f"optimizer_impl: {optimizer_class.__name__} cannot be fused for these "
                                  f"parameters; using foreach")
    return optimizer_class(params, foreach=impl != "single", **hyper)


class CheckpointError(RecboleMMError, OSError):
    """A checkpoint this run needs is missing or was written by another run."""


def new_run_id(now=None):
    """A name for one trainer's files that no other trainer gets: the local time to the
    microsecond, the process id, the trainer's number in this process and 4 random hex digits
    (two trainers of one process in the same microsecond, or two machines sharing a folder,
    still differ).

    Returns:
        str, e.g. ``"Mar-05-2025_14-03-22.123456-p4242-0-9f3a"``.
    """
    now = now or datetime.datetime.now()
    return f"{now:%b-%d-%Y_%H-%M-%S.%f}-p{os.getpid()}-{next(_RUN_NUMBERS)}-{secrets.token_hex(2)}"


_RUN_NUMBERS = itertools.count()  # trainers created in this process


class MultiModalTrainer(Trainer):
    """Trains any general model (the plugin's or RecBole's).

    - At the start of every epoch it calls ``model.pre_epoch_processing()`` when the model
      has one (FREEDOM's edge pruning, LIRDRec's weight copying, user-graph resampling).
    - After every epoch it steps a ``LambdaLR`` with factor ``a ** (epoch / b)`` from
      ``learning_rate_scheduler: [a, b]`` (MMRec; ``[1.0, 50]`` keeps the rate constant).
    - An evaluation split that names ``candidate_items`` (the item cold-start split) is ranked
      over those items only: the others are masked like the user's history.
    - ``denoise: tce | rce`` trains the model with T-CE / R-CE in place of its BPR loss
      (:class:`~recbole_mm.model.loss.DenoisingBPRLoss`); ``wbpr`` samples negatives by
      popularity; ``bod`` weights the model's BPR rows by BOD's weight generator and steps
      the generator by gradient matching after every ``bod_outer_every`` epochs
      (:class:`~recbole_mm.trainer.bod.BOD`, kept in ``self.bod``); ``damrs`` weights them by
      DA-MRS's preference-guided weights from three denoised item views of the model's item
      vectors (:class:`~recbole_mm.trainer.damrs_denoise.DAMRSDenoiser`, kept in ``self.damrs``;
      its item graphs are built from the train split when training starts).
    - The optimiser runs torch's ``optimizer_impl`` implementation: ``fused`` by default for
      the plugin's models (one kernel per step, several times faster than RecBole's per-tensor
      loop on large feature tables; see :func:`build_optimizer`), RecBole's own optimiser for
      RecBole's models (``recbole``), so that they give RecBole's numbers through the plugin.
    - GAUC's mean ranks are counted instead of sorted (:class:`MultiModalCollector`): the
      same metric values, without an O(I log I) sort of every user's scores.
    - Checkpoints are ``<checkpoint_dir>/<Model>-<run_id>.pth`` (:func:`new_run_id`: unique
      per trainer, not per second as RecBole's), written atomically and stamped with the
      run id; ``evaluate(load_best_model=True)`` loads this trainer's file and refuses one
      that another run has overwritten.
    - Without validation (an empty valid split, or ``eval_step: 0``) it says so before the
      first epoch, trains every configured epoch without early stopping, and the test pass
      uses the last epoch's model (RecBole's behaviour, which it leaves silent).
    - On a distributed run (:mod:`recbole_mm.collectives`) the per-epoch hook draws from the
      same seed on every rank and full-sort metrics are computed over every rank's users at
      once.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.run_id = collectives.broadcast_object(new_run_id(), config)  # every rank reads rank 0's file
        self.saved_model_file = os.path.join(self.checkpoint_dir, f"{config['model']}-{self.run_id}.pth")
        self.eval_collector = MultiModalCollector(config)
        self._excluded_items = None  # items masked in the current evaluation (cold-start candidates)
        decay, period = config["learning_rate_scheduler"] or (1.0, 50)
        self.lr_scheduler = LambdaLR(self.optimizer, lambda epoch: decay ** (epoch / period))
        if config["denoise"] and not trains(model):
            raise ConfigError(f"denoise: {config['denoise']} reweighs a trained model's loss; "
                              f"{type(model).__name__} trains nothing")
        if not trains(model) and self.epochs > 1:
            self.logger.info(f"{type(model).__name__} trains nothing: one epoch instead of epochs={self.epochs}")
            self.epochs = 1
        self.bod = BOD(config, model) if config["denoise"] == "bod" else None
        self.damrs = DAMRSDenoiser(config, model) if config["denoise"] == "damrs" else None
        self.denoising_loss = self._install_denoising(config, model)
        # --- distributed runs (recbole_mm.collectives); nothing changes in one process
        if collectives.is_distributed(config):
            self.eval_collector = collectives.distributed_collector(MultiModalCollector)(config)

    def _build_optimizer(self, **kwargs):
        """RecBole's optimiser choice (``learner``, ``learning_rate``, ``weight_decay``, or the
        same keyword arguments), built by :func:`build_optimizer` with ``optimizer_impl``."""
        learner = kwargs.get("learner", self.learner)
        if learner.lower() not in TORCH_OPTIMIZERS or self.config["optimizer_impl"] == "recbole":
            return super()._build_optimizer(**kwargs)  # RecBole's own (its models' default; sparse_adam)
        params = kwargs.pop("params", self.model.parameters())
        weight_decay = kwargs.get("weight_decay", self.weight_decay)
        if self.config["reg_weight"] and weight_decay and weight_decay * self.config["reg_weight"] > 0:
            self.logger.warning("The parameters [weight_decay] and [reg_weight] are specified simultaneously, "
                                "which may lead to double regularization.")
        return build_optimizer(learner, params, self.config["optimizer_impl"] or "fused",
                               sparse_grads=self._sparse_grads(), lr=kwargs.get("learning_rate", self.learning_rate),
                               weight_decay=weight_decay)

    def _sparse_grads(self):
        """True when a module of the model makes sparse gradients (``nn.Embedding(sparse=True)``)."""
        return any(getattr(module, "sparse", False) is True for module in self.model.modules())

    @staticmethod
    def _install_denoising(config, model):
        """``denoise: tce | rce``: the model's BPR goes through :class:`DenoisingBPRLoss`;
        ``wbpr`` works through the negative sampler (see :mod:`recbole_mm.config`), ``bod``
        through :class:`~recbole_mm.trainer.bod.BOD` and ``damrs`` through
        :class:`~recbole_mm.trainer.damrs_denoise.DAMRSDenoiser` (set up before this runs)."""
        mode = config["denoise"]
        if mode not in DENOISE_MODES:
            raise ConfigError(f"denoise must be one of {[m for m in DENOISE_MODES if m]} or unset, got {mode!r}")
        if mode not in DenoisingBPRLoss.MODES:
            return None
        loss = DenoisingBPRLoss(mode, config["tce_drop_rate"], config["tce_num_gradual"], config["rce_beta"])
        install_denoising_loss(model, loss)
        return loss

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        hook = getattr(self.model, "pre_epoch_processing", None)
        if callable(hook):
            with collectives.same_random_state(self.config, epoch_idx):
                hook()
        loss_func = loss_func or self.model.calculate_loss
        if self.denoising_loss is not None:
            loss_func = self._counting_iterations(loss_func)
        if self.bod is not None:
            loss_func = self.bod.inner_loss(loss_func)
        if self.damrs is not None:
            self.damrs.setup(train_data._dataset)
            loss_func = self.damrs.loss_function(loss_func)
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        if self.bod is not None and self.bod.outer_due(epoch_idx):
            self.bod.outer_round(train_data)
        self.lr_scheduler.step()
        return loss

    def _counting_iterations(self, loss_func):
        """``loss_func`` that advances T-CE's iteration counter once per batch."""
        def counted(interaction):
            result = loss_func(interaction)
            self.denoising_loss.iteration += 1
            return result
        return counted

    # ------------------------------------------------------------------ fit, checkpoints
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._warn_without_validation(valid_data)
        if self.damrs is not None:  # its item graphs (or its refusal of the dataset) before the first epoch
            self.damrs.setup(train_data._dataset)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _warn_without_validation(self, valid_data):
        """One warning, before training, when RecBole's ``fit`` will not validate."""
        if self.eval_step > 0 and valid_data:
            return
        if self.start_epoch >= self.epochs:
            return
        reason = "eval_step is 0" if self.eval_step <= 0 else "the valid split is empty"
        self.logger.warning(
            f"No validation ({reason}): training all {self.epochs - self.start_epoch} epochs without early "
            "stopping; the model of the last epoch is saved and tested, and best_valid_result is None."
        )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint (config, epoch, weights, optimiser) plus ``run_id`` and
        :meth:`checkpoint_extras`, written atomically (:func:`~recbole_mm.files.atomic_torch_save`)."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "run_id": self.run_id,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            **self.checkpoint_extras(),
        }
        atomic_torch_save(state, saved_model_file, pickle_protocol=4)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def checkpoint_extras(self):
        """Entries a trainer adds to its checkpoints (none here; GUIDER's state in its trainer)."""
        return {}

    def resume_checkpoint(self, resume_file):
        """RecBole's resume; the run continues under the id of the checkpoint it resumes (``None``
        for a checkpoint RecBole's own trainer wrote), since it goes on writing that file."""
        super().resume_checkpoint(resume_file)
        self.run_id = torch.load(str(resume_file), map_location="cpu", weights_only=False).get("run_id")

    def load_checkpoint(self, model_file=None):
        """Restore the weights of ``model_file``, or of this trainer's own checkpoint.

        Raises:
            CheckpointError: this trainer saved no checkpoint (``fit(saved=False)``), or its
                file now holds another run's checkpoint (``run_id`` differs).
        """
        checkpoint_file = model_file or self.saved_model_file
        if not os.path.isfile(checkpoint_file):
            raise CheckpointError(
                f"Checkpoint {checkpoint_file} not found"
                + ("" if model_file else ": this trainer saved none (fit with saved=False?); "
                   "evaluate with load_best_model=False to test the model as it is.")
            )
        checkpoint = torch.load(checkpoint_file, map_location=self.device, weights_only=False)
        if model_file is None and checkpoint.get("run_id") != self.run_id:
            raise CheckpointError(
                f"Checkpoint {checkpoint_file} was overwritten by another run (run id "
                f"{checkpoint.get('run_id')}, this run is {self.run_id}); its weights are not this run's."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return checkpoint

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            collectives.barrier(self.config)  # rank 0 has written the checkpoint
            self.load_checkpoint(model_file)
        candidates = getattr(eval_data._dataset, "candidate_items", None)
        self._excluded_items = None
        if candidates is not None:
            excluded = np.ones(eval_data._dataset.item_num, dtype=bool)
            excluded[candidates] = False
            self._excluded_items = torch.from_numpy(excluded).to(self.device)
        # distributed runs: full-sort rows are gathered per user over the ranks
        self.eval_collector.gather_users = isinstance(eval_data, FullSortEvalDataLoader)
        return super().evaluate(eval_data, False, None, show_progress)

    def _map_reduce(self, result, num_sample):
        """RecBole's reduction of each rank's metrics, skipped where the collector already
        computed them over every rank's users (:class:`~recbole_mm.collectives.GatheringCollector`)."""
        if getattr(self.eval_collector, "gathered", False):
            return result
        return super()._map_reduce(result, num_sample)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self._excluded_items is not None:
            scores[:, self._excluded_items] = -np.inf
        return interaction, scores, positive_u, positive_i
