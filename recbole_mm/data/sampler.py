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
"""
import itertools

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
        """Flatten the used pairs once, as sorted ``key * item_num + value`` codes, for
        :meth:`sample_by_key_ids`."""
        used = self.used_ids
        width = int(self.item_num)
        lengths = np.fromiter(map(len, used), dtype=np.int64, count=len(used))
        values = np.fromiter(itertools.chain.from_iterable(used), dtype=np.int64, count=int(lengths.sum()))
        self.used_codes = np.sort(np.repeat(np.arange(len(used), dtype=np.int64), lengths) * width + values)

    # ------------------------------------------------------------------ RecBole's hooks
    def _get_candidates_list(self):
        return super()._get_candidates_list() if self.candidates is None else self.candidates

    def _uni_sampling(self, sample_num):
        if self.allowed_items is None:
            return super()._uni_sampling(sample_num)
        return self.allowed_items[np.random.randint(0, len(self.allowed_items), sample_num)]

    def _pop_sampling(self, sample_num):
        return super()._pop_sampling(sample_num) if self.popularity is None else self.popularity(sample_num)

    def _is_used(self, keys, candidates):
        codes, query = self.used_codes, keys * int(self.item_num) + candidates
        if not len(codes):
            return np.zeros(len(query), dtype=bool)
        return codes[np.searchsorted(codes, query).clip(max=len(codes) - 1)] == query

    def sample_by_key_ids(self, key_ids, num):
        """RecBole's draws, in the same order (every pending row redrawn at once until none hits
        the key's used ids), so a seeded run gives the same negatives; only the membership test
        is vectorised (after :meth:`vectorise_rejection`)."""
        if self.used_codes is None:
            return super().sample_by_key_ids(key_ids, num)
        keys = np.tile(np.asarray(key_ids, dtype=np.int64), num)
        value_ids = np.zeros(len(keys), dtype=np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            value_ids[pending] = self.sampling(len(pending))
            pending = pending[self._is_used(keys[pending], value_ids[pending])]
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
