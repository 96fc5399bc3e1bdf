"""Train loaders beyond RecBole's: ``train_sampling: user`` draws batches of users, not of
interactions (the per-user sampler of the LATTICE / MICRO authors' code)."""
import numpy as np
import torch
from recbole.data.dataloader import TrainDataLoader

from recbole_mm.errors import ConfigError
from recbole_mm.options import TRAIN_SAMPLINGS  # noqa: F401  (importable from here too)


class UserSampledTrainDataLoader(TrainDataLoader):
    r"""Batches of **distinct users**, each with one of its train interactions drawn uniformly
    (and the negatives RecBole's sampler draws for it), as ``sample()`` of CRIPAC-DIG/MICRO's
    and LATTICE's ``load_data.py``:

    - an epoch is :math:`\lfloor E / B \rfloor + 1` batches (E train interactions, B =
      ``train_batch_size`` rows before negatives), not one pass over the interactions;
    - each batch: B users drawn without replacement among the users with train interactions
      (all of them when there are fewer), each user's positive drawn uniformly among its
      train rows. Heavy users are therefore seen as often as light ones, where RecBole's
      loader (``train_sampling: interaction``) sees each user in proportion to its history.

    The draws come from the loader's own ``torch.Generator`` (seeded with ``seed``, as
    RecBole's shuffling). Under DDP every rank draws the same users and keeps every
    ``world_size``-th of them from its rank on, so the ranks' batches are disjoint.
    Rows, transforms and negative sampling are RecBole's (``collate_fn``).
    """

    def __init__(self, config, dataset, sampler, shuffle=True):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        users = dataset.inter_feat[dataset.uid_field].numpy()
        if len(users) == 0:
            raise ConfigError("train_sampling: user needs train interactions; the train split is empty")
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users)
        self._user_ids = np.flatnonzero(counts)
        self._rows_by_user = torch.from_numpy(order)  # row ids, grouped by user
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._starts = torch.from_numpy(starts[self._user_ids])
        self._counts = torch.from_numpy(counts[self._user_ids])
        self._rank = config["local_rank"] if not config["single_spec"] else 0
        self._world = config["world_size"] if not config["single_spec"] else 1

    @property
    def users_per_batch(self):
        """Distinct users per batch, all ranks together (``train_batch_size`` / rows per user)."""
        return max(1, self.config["train_batch_size"] // self.times) if self.neg_sample_args["distribution"] != "none" \
            else self.config["train_batch_size"]

    def __len__(self):
        return self.sample_size // self.users_per_batch + 1

    def batch_rows(self):
        """(B,) train row ids of one batch: distinct users, one uniform row each (this rank's share)."""
        n_users = len(self._user_ids)
        chosen = torch.randperm(n_users, generator=self.generator)[:min(self.users_per_batch, n_users)]
        offsets = (torch.rand(len(chosen), generator=self.generator) * self._counts[chosen]).long()
        rows = self._rows_by_user[self._starts[chosen] + offsets]
        return rows[self._rank::self._world]

    def __iter__(self):
        for _ in range(len(self)):
            yield self.collate_fn(self.batch_rows().numpy())
