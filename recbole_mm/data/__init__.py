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
    """RecBole's ``data_preparation``; under the item cold-start split the held-out items are
    also kept out of the training negatives, so they never appear in training at all."""
    train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
    cold_items = getattr(train_data._dataset, "cold_items", None)
    if cold_items is not None and train_data._sampler is not None:
        exclude_from_negatives(train_data._sampler, np.concatenate(cold_items))
    return train_data, valid_data, test_data


def exclude_from_negatives(sampler, items):
    """Make a RecBole sampler draw uniform negatives only among the items not in ``items``."""
    if sampler.distribution != "uniform":
        raise ValueError("the cold-start split supports uniform negative sampling only")
    allowed = np.setdiff1d(np.arange(1, sampler.item_num), items)
    sampler._uni_sampling = lambda sample_num: allowed[np.random.randint(0, len(allowed), sample_num)]


__all__ = [
    "create_dataset", "data_preparation", "MultiModalDataset", "DatasetNotFoundError",
    "FeatureFileError",
]
