"""Loaders beyond RecBole's: ``train_sampling: user`` draws batches of users, not of
interactions (the per-user sampler of the LATTICE / MICRO authors' code); RecBole's train
batches without torch's per-index machinery; full-sort evaluation batches collated without a
loop over their users."""
import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader

from recbole_mm.data.graphs import ragged_rows
from recbole_mm.errors import ConfigError
from recbole_mm.options import TRAIN_SAMPLINGS  # noqa: F401  (importable from here too)


class DirectTrainDataLoader(TrainDataLoader):
    """RecBole's train loader, each batch's row ids sliced from one permutation per epoch.

    RecBole hands torch's ``DataLoader`` a list of row ids: every batch is then a Python list of
    ``step`` ints built by the batch sampler and fetched index by index before ``collate_fn``
    sees it (about 1 ms of the 4–5 ms a 2,048-row batch costs on the CPU, a third of a BPR epoch
    on the bundled data). Here ``collate_fn`` gets numpy slices of the permutation. The epoch
    draws what torch's single-process iterator draws from the loader's generator, in its order
    (a base seed, the permutation, the sampler's closing permutation), so the batches are
    RecBole's, row for row, epoch after epoch. Under DDP or with ``worker`` > 0 the loader is
    RecBole's own.
    """

    def _direct(self):
        return self.config["single_spec"] and not self.config["worker"]

    def __iter__(self):
        return self._batches() if self._direct() else super().__iter__()

    def _batches(self):
        n_rows, step = self.sample_size, self.batch_sampler.batch_size
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the iterator's base seed
        order = torch.randperm(n_rows, generator=self.generator) if self.shuffle else torch.arange(n_rows)
        order = order.numpy()
        for start in range(0, n_rows, step):
            yield self.collate_fn(order[start:start + step])
        if self.shuffle:  # the random sampler's last (empty) draw once its permutation is spent
            torch.randperm(n_rows, generator=self.generator)


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


def _ragged_table(per_user):
    """CSR (pointers (U + 1,), values) of an object array of per-user int64 tensors (``None``
    for users without any)."""
    lengths = torch.tensor([0 if items is None else len(items) for items in per_user], dtype=torch.int64)
    pointers = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    chunks = [items for items in per_user if items is not None and len(items)]
    values = torch.cat(chunks).to(torch.int64) if chunks else torch.zeros(0, dtype=torch.int64)
    return pointers, values


class VectorisedFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's full-sort evaluation loader, its batches collated without a loop over their
    users: RecBole's ``collate_fn`` builds each user's history and positive index tensors one
    by one (about 0.9 s of a 6 s evaluation on the Sports graph, 35,598 users); here both tables
    are CSR arrays, built at the first batch, and a batch's entries come from one gather
    (:func:`~recbole_mm.data.graphs.ragged_rows`). Same tensors, same order.

    ``uid2history_item`` / ``uid2positive_item`` changed after the first batch need
    :meth:`forget_tables` (:func:`~recbole_mm.data.mask_train_history_only` calls it).
    """

    _tables = None

    def forget_tables(self):
        self._tables = None

    def collate_fn(self, index):
        if self.is_sequential:
            return super().collate_fn(index)
        if self._tables is None:
            self._tables = (_ragged_table(self.uid2history_item), _ragged_table(self.uid2positive_item))
        user_df = self.user_df[np.array(index)]
        users = user_df[self.uid_field].to(torch.int64)
        (history_pointers, history_items), (positive_pointers, positive_items) = self._tables
        history_u, history_i = ragged_rows(history_pointers, history_items, users)
        positive_u, positive_i = ragged_rows(positive_pointers, positive_items, users)
        return user_df, (history_u, history_i), positive_u, positive_i
