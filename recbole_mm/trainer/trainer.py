"""``MultiModalTrainer``: RecBole's ``Trainer`` plus the per-epoch model hook and MMRec's
learning-rate schedule."""
import inspect
import logging

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.trainer import Trainer
from torch import optim
from torch.optim.lr_scheduler import LambdaLR

from recbole_mm import distributed
from recbole_mm.model.loss import DenoisingBPRLoss, install_denoising_loss
from recbole_mm.trainer.bod import BOD
from recbole_mm.trainer.collector import MultiModalCollector

DENOISE_MODES = (None, "tce", "rce", "wbpr", "bod")
OPTIMIZER_IMPLS = ("fused", "foreach", "single")
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
            RecBole's default). All three compute the same update, up to float rounding.
        sparse_grads: the model produces sparse gradients (``nn.Embedding(sparse=True)``),
            which fused kernels do not take.
        **hyper: the optimiser's keyword arguments (``lr``, ``weight_decay``, ...).
    """
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"optimizer_impl must be one of {list(OPTIMIZER_IMPLS)}, got {impl!r}")
    optimizer_class = TORCH_OPTIMIZERS[learner.lower()]
    params = list(params)
    accepted = inspect.signature(optimizer_class).parameters
    if impl == "fused":
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        if "fused" in accepted and not sparse_grads and fusable(tensors):
            return optimizer_class(params, fused=True, **hyper)
        logging.getLogger().debug(f"optimizer_impl: {optimizer_class.__name__} cannot be fused for these "
                                  f"parameters; using foreach")
    return optimizer_class(params, foreach=impl != "single", **hyper)


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
      (:class:`~recbole_mm.trainer.bod.BOD`, kept in ``self.bod``).
    - The optimiser runs torch's ``optimizer_impl`` implementation (``fused`` by default: one
      kernel per step, several times faster than RecBole's per-tensor loop on large feature
      tables; see :func:`build_optimizer`).
    - GAUC's mean ranks are counted instead of sorted (:class:`MultiModalCollector`): the
      same metric values, without an O(I log I) sort of every user's scores.
    - On a distributed run (:mod:`recbole_mm.distributed`) the per-epoch hook draws from the
      same seed on every rank and full-sort metrics are computed over every rank's users at
      once.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = MultiModalCollector(config)
        self._excluded_items = None  # items masked in the current evaluation (cold-start candidates)
        decay, period = config["learning_rate_scheduler"] or (1.0, 50)
        self.lr_scheduler = LambdaLR(self.optimizer, lambda epoch: decay ** (epoch / period))
        self.bod = BOD(config, model) if config["denoise"] == "bod" else None
        self.denoising_loss = self._install_denoising(config, model)
        # --- distributed runs (recbole_mm.distributed); nothing changes in one process
        if distributed.is_distributed(config):
            self.eval_collector = distributed.distributed_collector(MultiModalCollector)(config)

    def _build_optimizer(self, **kwargs):
        """RecBole's optimiser choice (``learner``, ``learning_rate``, ``weight_decay``, or the
        same keyword arguments), built by :func:`build_optimizer` with ``optimizer_impl``."""
        learner = kwargs.get("learner", self.learner)
        if learner.lower() not in TORCH_OPTIMIZERS:  # sparse_adam, unknown names: RecBole's handling
            return super()._build_optimizer(**kwargs)
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
        through :class:`~recbole_mm.trainer.bod.BOD` (set up before this runs)."""
        mode = config["denoise"]
        if mode not in DENOISE_MODES:
            raise ValueError(f"denoise must be one of {[m for m in DENOISE_MODES if m]} or unset, got {mode!r}")
        if mode not in DenoisingBPRLoss.MODES:
            return None
        loss = DenoisingBPRLoss(mode, config["tce_drop_rate"], config["tce_num_gradual"], config["rce_beta"])
        install_denoising_loss(model, loss)
        return loss

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        hook = getattr(self.model, "pre_epoch_processing", None)
        if callable(hook):
            with distributed.same_random_state(self.config, epoch_idx):
                hook()
        loss_func = loss_func or self.model.calculate_loss
        if self.denoising_loss is not None:
            loss_func = self._counting_iterations(loss_func)
        if self.bod is not None:
            loss_func = self.bod.inner_loss(loss_func)
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

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        candidates = getattr(eval_data._dataset, "candidate_items", None) if eval_data else None
        self._excluded_items = None
        if candidates is not None:
            excluded = np.ones(eval_data._dataset.item_num, dtype=bool)
            excluded[candidates] = False
            self._excluded_items = torch.from_numpy(excluded).to(self.device)
        # distributed runs: full-sort rows are gathered per user over the ranks
        self.eval_collector.gather_users = isinstance(eval_data, FullSortEvalDataLoader)
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def _map_reduce(self, result, num_sample):
        """RecBole's reduction of each rank's metrics, skipped where the collector already
        computed them over every rank's users (:class:`~recbole_mm.distributed.GatheringCollector`)."""
        if getattr(self.eval_collector, "gathered", False):
            return result
        return super()._map_reduce(result, num_sample)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self._excluded_items is not None:
            scores[:, self._excluded_items] = -np.inf
        return interaction, scores, positive_u, positive_i
