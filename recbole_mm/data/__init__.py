"""Datasets, format import, synthetic data and graph builders."""
import itertools

import numpy as np
import torch
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation as recbole_data_preparation
from recbole.utils import ModelType

from recbole_mm.data.dataset import DatasetNotFoundError, MultiModalDataset
from recbole_mm.data.modality import FeatureFileError
from recbole_mm.errors import ConfigError, DataError


def create_dataset(config):
    """``MultiModalDataset`` for general and traditional (Pop, ItemKNN, EASE, ...) models,
    RecBole's own dataset classes for the other model types."""
    if config["MODEL_TYPE"] in (ModelType.GENERAL, ModelType.TRADITIONAL):
        dataset = MultiModalDataset(config)
        if config["save_dataset"]:
            dataset.save()
        return dataset
    return recbole_create_dataset(config)


EVAL_PROTOCOLS = ("recbole", "mmrec")


def data_preparation(config, dataset):
    """RecBole's ``data_preparation``, with these changes.

    - Popularity sampling (``denoise: wbpr``) counts the train split only: RecBole's sampler
      counts every split, which would let valid/test interactions shape training.
    - Under the item cold-start split the held-out items are kept out of the negatives, so
      they never appear in training at all.
    - ``eval_protocol: mmrec`` reproduces MMRec's two departures from RecBole: the test split
      masks only the user's train items (RecBole: train and valid items), and training
      negatives are drawn among the items that occur in the train split (RecBole: all
      items), still redrawn while in the user's train history.
    """
    protocol = config["eval_protocol"] or "recbole"
    if protocol not in EVAL_PROTOCOLS:
        raise ConfigError(f"eval_protocol must be one of {list(EVAL_PROTOCOLS)}, got {protocol!r}")
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    train_dataset = train_data._dataset
    train_users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
    train_items = train_dataset.inter_feat[train_dataset.iid_field].numpy()
    sampler = train_data._sampler
    if sampler is not None and sampler.distribution == "popularity":
        sampler._get_candidates_list = lambda: train_items
        sampler._pop_sampling = popularity_draw(np.arange(sampler.item_num), np.bincount(
            train_items, minlength=sampler.item_num), sampler.alpha)
    excluded = []
    cold_items = getattr(train_dataset, "cold_items", None)
    if cold_items is not None:
        excluded.append(np.concatenate(cold_items))
    if protocol == "mmrec":
        excluded.append(np.setdiff1d(np.arange(1, train_dataset.item_num), train_items))
        mask_train_history_only(test_data, train_users, train_items, train_dataset.user_num)
    if excluded and sampler is not None:
        exclude_from_negatives(sampler, np.unique(np.concatenate(excluded)))
    if sampler is not None and hasattr(sampler, "used_ids"):
        vectorise_rejection(sampler)
    return train_data, valid_data, test_data


def vectorise_rejection(sampler):
    """Replace the per-row Python loop of RecBole's ``sample_by_key_ids`` (one ``v in set``
    test per drawn negative, every batch) with one sorted-array lookup per redraw round.

    The draws are RecBole's own, in the same order (every pending row redrawn at once until
    none hits the key's used ids), so a seeded run gives the same negatives as before; only
    the membership test changes. The used pairs are flattened once, as sorted
    ``key * value_num + value`` codes.
    """
    used = sampler.used_ids
    width = int(sampler.item_num)
    lengths = np.fromiter(map(len, used), dtype=np.int64, count=len(used))
    values = np.fromiter(itertools.chain.from_iterable(used), dtype=np.int64, count=int(lengths.sum()))
    codes = np.sort(np.repeat(np.arange(len(used), dtype=np.int64), lengths) * width + values)

    def is_used(keys, candidates):
        query = keys * width + candidates
        position = np.searchsorted(codes, query).clip(max=max(len(codes) - 1, 0))
        return codes[position] == query if len(codes) else np.zeros(len(query), dtype=bool)

    def sample_by_key_ids(key_ids, num):
        keys = np.tile(np.asarray(key_ids, dtype=np.int64), num)
        value_ids = np.zeros(len(keys), dtype=np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            value_ids[pending] = sampler.sampling(len(pending))
            pending = pending[is_used(keys[pending], value_ids[pending])]
        return torch.tensor(value_ids, dtype=torch.long)

    sampler.sample_by_key_ids = sample_by_key_ids


def mask_train_history_only(eval_data, train_users, train_items, n_users):
    """Make a full-sort evaluation loader mask each user's train items only (MMRec's test
    ranking), in place of RecBole's history (every earlier split of the user).

    ``eval_data.uid2history_item[u]`` is what RecBole's ``FullSortEvalDataLoader`` masks for
    user ``u``; it becomes the train items of ``u`` (``train_users``/``train_items``: (E,)
    arrays of the train split), grouped by user with one stable sort.
    """
    if getattr(eval_data, "uid2history_item", None) is None:
        raise ConfigError("eval_protocol: mmrec needs full-sort evaluation (eval_args mode: full)")
    order = np.argsort(train_users, kind="stable")
    bounds = np.cumsum(np.bincount(train_users, minlength=n_users))[:-1]
    per_user = np.split(train_items[order].astype(np.int64), bounds)
    users = eval_data.uid_list.numpy() if torch.is_tensor(eval_data.uid_list) else np.asarray(eval_data.uid_list)
    history = np.empty(len(users), dtype=object)
    history[:] = [torch.from_numpy(per_user[u]) for u in users]
    eval_data.uid2history_item[users] = history


def exclude_from_negatives(sampler, items):
    """Make a RecBole sampler draw negatives only among the items not in ``items``.

    ``uniform``: uniform over the other real items. ``popularity`` (``denoise: wbpr``):
    RecBole's weights, popularity^alpha over the items of its candidate list, renormalised
    over the other items (see :func:`popularity_draw`).
    """
    allowed = np.setdiff1d(np.arange(1, sampler.item_num), items)
    if sampler.distribution == "uniform":
        sampler._uni_sampling = lambda sample_num: allowed[np.random.randint(0, len(allowed), sample_num)]
    elif sampler.distribution == "popularity":
        counts = np.bincount(np.asarray(sampler._get_candidates_list(), dtype=np.int64), minlength=sampler.item_num)
        sampler._pop_sampling = popularity_draw(allowed, counts[allowed], sampler.alpha)
    else:
        raise ConfigError(f"the cold-start split supports uniform or popularity negative sampling, "
                         f"not {sampler.distribution!r}")


def popularity_draw(items, counts, alpha):
    """``draw(n)`` -> (n,) items sampled with P(i) ∝ counts_i^alpha (items never seen have
    P = 0, as in RecBole's alias table); vectorised inverse-CDF sampling from numpy's global
    generator (seeded by RecBole's ``init_seed``)."""
    seen = counts > 0
    if not seen.any():
        raise DataError("popularity negative sampling: no candidate item occurs in the data")
    items, weights = items[seen], counts[seen].astype(np.float64) ** float(alpha)
    cdf = np.cumsum(weights / weights.sum())

    def draw(sample_num):
        return items[np.searchsorted(cdf, np.random.random(sample_num), side="right").clip(max=len(items) - 1)]

    return draw


__all__ = [
    "create_dataset", "data_preparation", "MultiModalDataset", "DatasetNotFoundError",
    "FeatureFileError",
]
