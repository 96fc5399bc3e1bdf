"""Datasets, format import, synthetic data and graph builders."""
from recbole.data import data_preparation
from recbole.data import create_dataset as recbole_create_dataset
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


__all__ = [
    "create_dataset", "data_preparation", "MultiModalDataset", "DatasetNotFoundError",
    "FeatureFileError",
]
