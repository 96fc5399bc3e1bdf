"""``MultiModalTrainer``: RecBole's ``Trainer`` plus the per-epoch model hook and MMRec's
learning-rate schedule."""
import numpy as np
import torch
from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_mm.model.loss import DenoisingBPRLoss, install_denoising_loss
from recbole_mm.trainer.bod import BOD
from recbole_mm.trainer.collector import MultiModalCollector

DENOISE_MODES = (None, "tce", "rce", "wbpr", "bod")


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
    - GAUC's mean ranks are counted instead of sorted (:class:`MultiModalCollector`): the
      same metric values, without an O(I log I) sort of every user's scores.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = MultiModalCollector(config)
        self._excluded_items = None  # items masked in the current evaluation (cold-start candidates)
        decay, period = config["learning_rate_scheduler"] or (1.0, 50)
        self.lr_scheduler = LambdaLR(self.optimizer, lambda epoch: decay ** (epoch / period))
        self.bod = BOD(config, model) if config["denoise"] == "bod" else None
        self.denoising_loss = self._install_denoising(config, model)

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
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self._excluded_items is not None:
            scores[:, self._excluded_items] = -np.inf
        return interaction, scores, positive_u, positive_i
