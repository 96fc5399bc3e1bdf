"""``MultiModalTrainer``: RecBole's ``Trainer`` plus the per-epoch model hook and MMRec's
learning-rate schedule."""
from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_mm.trainer.collector import MultiModalCollector


class MultiModalTrainer(Trainer):
    """Trains any general model (the plugin's or RecBole's).

    - At the start of every epoch it calls ``model.pre_epoch_processing()`` when the model
      has one (FREEDOM's edge pruning, LIRDRec's weight copying, user-graph resampling).
    - After every epoch it steps a ``LambdaLR`` with factor ``a ** (epoch / b)`` from
      ``learning_rate_scheduler: [a, b]`` (MMRec; ``[1.0, 50]`` keeps the rate constant).
    - GAUC's mean ranks are counted instead of sorted (:class:`MultiModalCollector`): the
      same metric values, without an O(I log I) sort of every user's scores.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = MultiModalCollector(config)
        decay, period = config["learning_rate_scheduler"] or (1.0, 50)
        self.lr_scheduler = LambdaLR(self.optimizer, lambda epoch: decay ** (epoch / period))

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        hook = getattr(self.model, "pre_epoch_processing", None)
        if callable(hook):
            hook()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.lr_scheduler.step()
        return loss
