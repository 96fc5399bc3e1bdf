"""Datasets, format import, synthetic data and graph builders."""
import numpy as np
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation as recbole_data_preparation
from recbole.utils import ModelType

from recbole_mm.data.dataset import DatasetNotFoundError, MultiModalDataset
from recbole_mm.data.modality import FeatureFileError


def create_dataset(config):
    """``MultiModalDataset`` for general and traditional (Pop, ItemKNN, EASE, ...) models,
    RecBole's own dataset classes for the other model types."""
    if config["MODEL_TYPE"] in (ModelType.GENERAL, ModelType.TRADITIONAL):
        dataset = MultiModalDataset(config)
        if config["save_dataset"]:
            dataset.save()
        return dataset
    return recbole_create_dataset(config)


def data_preparation(config, dataset):
    """RecBole's ``data_preparation``, with two changes to the training negatives.

    - Popularity sampling (``denoise: wbpr``) counts the train split only: RecBole's sampler
      counts every split, which would let valid/test interactions shape training.
    - Under the item cold-start split the held-out items are kept out of the negatives, so
      they never appear in training at all.
    """
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    sampler = train_data._sampler
    if sampler is not None and sampler.distribution == "popularity":
        train_items = train_data._dataset.inter_feat[train_data._dataset.iid_field].numpy()
        sampler._get_candidates_list = lambda: train_items
        sampler._pop_sampling = popularity_draw(np.arange(sampler.item_num), np.bincount(
            train_items, minlength=sampler.item_num), sampler.alpha)
    cold_items = getattr(train_data._dataset, "cold_items", None)
    if cold_items is not None and sampler is not None:
        exclude_from_negatives(sampler, np.concatenate(cold_items))
    return train_data, valid_data, test_data


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
        raise ValueError(f"the cold-start split supports uniform or popularity negative sampling, "
                         f"not {sampler.distribution!r}")


def popularity_draw(items, counts, alpha):
    """``draw(n)`` -> (n,) items sampled with P(i) ∝ counts_i^alpha (items never seen have
    P = 0, as in RecBole's alias table); vectorised inverse-CDF sampling from numpy's global
    generator (seeded by RecBole's ``init_seed``)."""
    seen = counts > 0
    if not seen.any():
        raise ValueError("popularity negative sampling: no candidate item occurs in the data")
    items, weights = items[seen], counts[seen].astype(np.float64) ** float(alpha)
    cdf = np.cumsum(weights / weights.sum())

    def draw(sample_num):
        return items[np.searchsorted(cdf, np.random.random(sample_num), side="right").clip(max=len(items) - 1)]

    return draw


__all__ = [
    "create_dataset", "data_preparation", "MultiModalDataset", "DatasetNotFoundError",
    "FeatureFileError",
]
