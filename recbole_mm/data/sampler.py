"""``MultiModalSampler``: RecBole's negative ``Sampler`` with the train-split changes of
:func:`recbole_mm.data.data_preparation` as methods, each off until it is configured.

:func:`recbole_mm.data.data_preparation` configures the train sampler only (after RecBole's
``set_phase`` copy), so valid and test samplers behave exactly as RecBole's:

- :meth:`~MultiModalSampler.count_train_split_only`: popularity sampling (``denoise: wbpr``)
  counts the train split only (RecBole counts every split);
- :meth:`~MultiModalSampler.exclude_from_negatives`: negatives never drawn among given items
  (held-out cold-start items; under ``eval_protocol: mmrec`` the items absent from train);
- :meth:`~MultiModalSampler.vectorise_rejection`: one sorted-array lookup per redraw round
  in place of RecBole's per-row ``v in set`` loop; the draws are RecBole's own.

Every phase's used pairs are held as one sorted code array (:class:`UsedPairs`), not as
RecBole's Python set per user (about 60 MB for the three phases of the Sports graph, 35,598
users, and a Python loop over every interaction to build them); they read as RecBole's sets.
"""
import numpy as np
import torch
from recbole.sampler import Sampler
from recbole_mm.errors import ConfigError, DataError


class PopularityDraw:
    """``draw(n)`` -> (n,) items sampled with P(i) ∝ counts_i^alpha (items never seen have
    P = 0, as in RecBole's alias table); vectorised inverse-CDF sampling from numpy's global
    generator (seeded by RecBole's ``init_seed``). A class, not a closure, so that a sampler
    holding one can be pickled (``save_dataloaders``)."""

    def __init__(self, items, counts, alpha):
        seen = counts > 0
        if not seen.any():
            raise DataError("popularity negative sampling: no candidate item occurs in the data")
        self.items, weights = items[seen], counts[seen].astype(np.float64) ** float(alpha)
        self.cdf = np.cumsum(weights / weights.sum())

    def __call__(self, sample_num):
        position = np.searchsorted(self.cdf, np.random.random(sample_num), side="right")
        return self.items[position.clip(max=len(self.items) - 1)]


class UsedPairs:
    """One phase's used (user, item) pairs, as sorted unique codes ``user * width + item``
    (width = the item count), readable as RecBole's ``used_ids`` of that phase: an array,
    indexed by user, of the user's item set.

    Attributes:
        codes: (P,) int64, sorted, unique. pointers: (n_users + 1,) int64, user u's codes are
        ``codes[pointers[u]:pointers[u + 1]]``. width: int.
    """

    def __init__(self, codes, n_users, width):
        self.codes, self.width = codes, int(width)
        self.pointers = np.searchsorted(codes, np.arange(n_users + 1, dtype=np.int64) * self.width)

    @classmethod
    def of_splits(cls, splits, n_users, width):
        """The pairs of every (users, items) array pair in ``splits``, duplicates merged."""
        codes = [np.asarray(users, dtype=np.int64) * int(width) + np.asarray(items, dtype=np.int64)
                 for users, items in splits]
        return cls(np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64), n_users, width)

    def __len__(self):
        return len(self.pointers) - 1

    def counts(self):
        """(n_users,) the number of items of each user."""
        return np.diff(self.pointers)

    def items_of(self, user):
        """(k,) int64 sorted items of one user."""
        return self.codes[self.pointers[user]:self.pointers[user + 1]] - int(user) * self.width

    def __getitem__(self, users):
        if np.ndim(users) == 0:
            return set(self.items_of(int(users)).tolist())
        sets = np.empty(len(users), dtype=object)
        sets[:] = [self[user] for user in np.asarray(users)]
        return sets

    def __iter__(self):
        return (self[user] for user in range(len(self)))


class MultiModalSampler(Sampler):
    """RecBole's ``Sampler``; the three changes of the module docstring, once configured.

    Attributes:
        allowed_items (numpy.ndarray or None): uniform draws pick among these items only.
        popularity (PopularityDraw or None): popularity draws (replaces RecBole's alias table).
        candidates (numpy.ndarray or None): the items whose occurrences define popularity.
        used_codes (numpy.ndarray or None): sorted ``user * item_num + item`` codes of the
            used pairs, for the vectorised rejection test.
    """

    def __init__(self, phases, datasets, distribution="uniform", alpha=1.0):
        self.allowed_items = None
        self.popularity = None
        self.candidates = None
        self.used_codes = None
        super().__init__(phases, datasets, distribution, alpha)

    # ------------------------------------------------------------------ configuration
    def count_train_split_only(self, train_items):
        """Popularity sampling counts ``train_items`` ((E,) item ids of the train split)."""
        if self.distribution == "popularity":
            self.candidates = train_items
            self.popularity = PopularityDraw(np.arange(self.item_num), np.bincount(
                train_items, minlength=self.item_num), self.alpha)

    def exclude_from_negatives(self, items):
        """Draw negatives only among the items not in ``items``.

        ``uniform``: uniform over the other real items. ``popularity`` (``denoise: wbpr``):
        RecBole's weights, popularity^alpha over the items of the candidate list, renormalised
        over the other items.
        """
        allowed = np.setdiff1d(np.arange(1, self.item_num), items)
        if self.distribution == "uniform":
            self.allowed_items = allowed
        elif self.distribution == "popularity":
            counts = np.bincount(np.asarray(self._get_candidates_list(), dtype=np.int64), minlength=self.item_num)
            self.popularity = PopularityDraw(allowed, counts[allowed], self.alpha)
        else:
            raise ConfigError(f"the cold-start split supports uniform or popularity negative sampling, "
                             f"not {self.distribution!r}")

    def vectorise_rejection(self):
        """Test draws against the used pairs' sorted ``key * item_num + value`` codes in
        :meth:`sample_by_key_ids`."""
        self.used_codes = self.used_ids.codes

    # ------------------------------------------------------------------ RecBole's hooks
    def get_used_ids(self):
        """RecBole's ``get_used_ids`` (per phase, the pairs of that split and every earlier one)
        as :class:`UsedPairs`, built without a loop over the interactions."""
        used, splits = {}, []
        for phase, dataset in zip(self.phases, self.datasets):
            splits.append((dataset.inter_feat[self.uid_field].numpy(), dataset.inter_feat[self.iid_field].numpy()))
            used[phase] = UsedPairs.of_splits(splits, self.user_num, self.item_num)
        if (used[self.phases[-1]].counts() + 1 == self.item_num).any():  # [PAD] is an item
            raise DataError("some users have interacted with every item, which leaves no negative item to sample "
                            "for them; filter them out with user_inter_num_interval")
        return used

    def _get_candidates_list(self):
        return super()._get_candidates_list() if self.candidates is None else self.candidates

    def _uni_sampling(self, sample_num):
        if self.allowed_items is None:
            return super()._uni_sampling(sample_num)
        return self.allowed_items[np.random.randint(0, len(self.allowed_items), sample_num)]

    def _pop_sampling(self, sample_num):
        return super()._pop_sampling(sample_num) if self.popularity is None else self.popularity(sample_num)

    def _is_used(self, codes, keys, candidates):
        query = keys * int(self.item_num) + candidates
        if not len(codes):
            return np.zeros(len(query), dtype=bool)
        return codes[np.searchsorted(codes, query).clip(max=len(codes) - 1)] == query

    def sample_by_key_ids(self, key_ids, num):
        """RecBole's draws, in the same order (every pending row redrawn at once until none hits
        the key's used ids), so a seeded run gives the same negatives; only the membership test
        is vectorised (every phase's pairs are :class:`UsedPairs`)."""
        codes = self.used_codes if self.used_codes is not None else getattr(self.used_ids, "codes", None)
        if codes is None:
            return super().sample_by_key_ids(key_ids, num)
        keys = np.tile(np.asarray(key_ids, dtype=np.int64), num)
        value_ids = np.zeros(len(keys), dtype=np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            value_ids[pending] = self.sampling(len(pending))
            pending = pending[self._is_used(codes, keys[pending], value_ids[pending])]
        return torch.tensor(value_ids, dtype=torch.long)


def create_samplers(config, built_datasets):
    """RecBole's ``create_samplers`` for general models, with :class:`MultiModalSampler` in
    place of ``Sampler``: the (train, valid, test) samplers, None where a phase samples no
    negatives. As in RecBole, valid and test reuse the train sampler with their own
    distribution (a copy per phase), or get a fresh one when training samples none."""
    phases = ["train", "valid", "test"]
    args = config["train_neg_sample_args"]
    base = MultiModalSampler(phases, built_datasets, args["distribution"], args["alpha"]) \
        if args["distribution"] != "none" else None
    samplers = [base.set_phase("train") if base else None]
    for phase in ("valid", "test"):
        distribution = config[f"{phase}_neg_sample_args"]["distribution"]
        if distribution == "none":
            samplers.append(None)
            continue
        if base is not None:
            base.set_distribution(distribution)
            samplers.append(base.set_phase(phase))
        else:
            samplers.append(MultiModalSampler(phases, built_datasets, distribution).set_phase(phase))
    return tuple(samplers)
