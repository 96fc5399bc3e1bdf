"""Loaders beyond RecBole's: ``train_sampling: user`` draws batches of users, not of
interactions (the per-user sampler of the LATTICE / MICRO authors' code); RecBole's train
batches without torch's per-index machinery; full-sort evaluation batches collated without a
loop over their users."""
from logging import getLogger

import numpy as np
import torch
from recbole.data.dataloader import AbstractDataLoader, FullSortEvalDataLoader, TrainDataLoader
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

from recbole_mm.data.graphs import ragged_rows
from recbole_mm.data.sampler import UsedPairs
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


def _codes_table(codes, width, n_users, users=None):
    """CSR (pointers (n_users + 1,), items) of sorted unique ``user * width + item`` codes; with
    ``users`` ((U',) tensor), of those users' codes only."""
    codes = np.asarray(codes, dtype=np.int64)
    if users is not None:
        codes = codes[np.isin(codes // int(width), users.numpy())]
    pointers = np.searchsorted(codes, np.arange(n_users + 1, dtype=np.int64) * int(width))
    return torch.from_numpy(pointers), torch.from_numpy(codes % int(width))


def _per_user_tensors(table, users, n_users):
    """RecBole's object array (index: user id) of per-user int64 tensors, from a CSR table;
    ``None`` for the users not in ``users``."""
    pointers, items = table
    per_user = np.array([None] * n_users)
    for user in users.tolist():
        per_user[user] = items[pointers[user]:pointers[user + 1]].clone()
    return per_user


class _PerUserTable:
    """RecBole's per-user table attribute (``uid2history_item`` / ``uid2positive_item``) of a
    :class:`VectorisedFullSortEvalDataLoader`: read, the object array of per-user tensors built
    from CSR table ``position`` (once, then kept, so that changes to it persist until
    :meth:`~VectorisedFullSortEvalDataLoader.forget_tables`); assigned (RecBole's own
    ``__init__``), kept as given."""

    def __init__(self, name, position):
        self.name, self.position = name, position

    def __get__(self, loader, owner=None):
        if loader is None:
            return self
        if loader._per_user is None:
            loader._per_user = {}
        if self.name not in loader._per_user:
            loader._per_user[self.name] = _per_user_tensors(loader._tables[self.position], loader.uid_list,
                                                            loader._dataset.user_num)
        return loader._per_user[self.name]

    def __set__(self, loader, per_user):
        loader._per_user = {**(loader._per_user or {}), self.name: per_user}


class VectorisedFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's full-sort evaluation loader without a Python object per user.

    RecBole builds, in a loop over every interaction, an int64 tensor per user for its positive
    items and one for its history (the sampler's used items minus the positives), and its
    ``collate_fn`` concatenates them user by user (about 0.9 s of a 6 s evaluation on the Sports
    graph, 35,598 users; the two tables of the valid and test loaders hold about 80 MB there).
    Here both tables are CSR arrays built with a few sorts (:func:`_codes_table`), and a batch's
    entries come from one gather (:func:`~recbole_mm.data.graphs.ragged_rows`). The batches
    hold RecBole's (user, item) entries, each user's items in ascending order (RecBole: the
    order of a Python set); the metrics do not depend on that order.

    ``uid2history_item`` / ``uid2positive_item`` are RecBole's per-user tensors, built when
    read; changes made to them count after :meth:`forget_tables`.
    """

    _tables = None
    _per_user = None

    def __init__(self, config, dataset, sampler, shuffle=False):
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL or not isinstance(getattr(sampler, "used_ids", None),
                                                                           UsedPairs):
            super().__init__(config, dataset, sampler, shuffle=shuffle)  # sets the per-user tables
            if not self.is_sequential:
                self.forget_tables()
            return
        self.logger = getLogger()
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.is_sequential = False
        dataset.sort(by=self.uid_field, ascending=True)  # as RecBole: its rows in user order
        width, n_users = int(dataset.item_num), int(dataset.user_num)
        users = dataset.inter_feat[self.uid_field].numpy().astype(np.int64)
        positive = np.unique(users * width + dataset.inter_feat[self.iid_field].numpy())
        self.uid_list = torch.from_numpy(np.unique(users))
        self.uid2items_num = np.bincount(positive // width, minlength=n_users).astype(np.int64)
        history = np.setdiff1d(sampler.used_ids.codes, positive, assume_unique=True)
        self._tables = (_codes_table(history, width, n_users, self.uid_list), _codes_table(positive, width, n_users))
        self.user_df = dataset.join(Interaction({self.uid_field: self.uid_list}))
        self.sample_size = len(self.user_df)
        if shuffle:
            self.logger.warning("FullSortEvalDataLoader can't shuffle")
        AbstractDataLoader.__init__(self, config, dataset, sampler, shuffle=False)

    uid2history_item = _PerUserTable("history", 0)
    uid2positive_item = _PerUserTable("positive", 1)

    def forget_tables(self):
        """Rebuild the CSR tables from the per-user tensors read (and perhaps changed) since."""
        tables = list(self._tables or (None, None))
        for position, name in enumerate(("history", "positive")):
            if self._per_user and name in self._per_user:
                tables[position] = _ragged_table(self._per_user[name])
        self._tables = tuple(tables)

    def set_history(self, users, items):
        """Mask exactly the given pairs: ``users``, ``items`` (E,) arrays (duplicates allowed)
        become the history table (see :func:`~recbole_mm.data.mask_train_history_only`)."""
        width, n_users = int(self._dataset.item_num), int(self._dataset.user_num)
        codes = np.unique(np.asarray(users, dtype=np.int64) * width + np.asarray(items, dtype=np.int64))
        self._tables = (_codes_table(codes, width, n_users, self.uid_list), self._tables[1])
        if self._per_user:
            self._per_user.pop("history", None)

    def collate_fn(self, index):
        if self.is_sequential:
            return super().collate_fn(index)
        user_df = self.user_df[np.array(index)]
        users = user_df[self.uid_field].to(torch.int64)
        (history_pointers, history_items), (positive_pointers, positive_items) = self._tables
        history_u, history_i = ragged_rows(history_pointers, history_items, users)
        positive_u, positive_i = ragged_rows(positive_pointers, positive_items, users)
        return user_df, (history_u, history_i), positive_u, positive_i
