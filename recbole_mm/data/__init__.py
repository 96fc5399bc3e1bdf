"""Datasets, format import, synthetic data and graph builders; ``create_dataset`` and
``data_preparation`` as RecBole's, for multimodal general models."""
from logging import getLogger

import numpy as np
import torch
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.data.utils import get_dataloader, load_split_dataloaders, save_split_dataloaders
from recbole.utils import ModelType, set_color

from recbole_mm.data.dataloader import (DirectTrainDataLoader, UserSampledTrainDataLoader,
                                       VectorisedFullSortEvalDataLoader)
from recbole_mm.data.dataset import DatasetNotFoundError, MultiModalDataset
from recbole_mm.data.modality import FeatureFileError
from recbole_mm.data.sampler import create_samplers
from recbole_mm.errors import ConfigError
from recbole_mm.options import EVAL_PROTOCOLS, TRAIN_SAMPLINGS


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
    """RecBole's ``data_preparation``, with these changes for general (and traditional) models;
    other model types get RecBole's own.

    - Popularity sampling (``denoise: wbpr``) counts the train split only: RecBole's sampler
      counts every split, which would let valid/test interactions shape training.
    - Under the item cold-start split the held-out items are kept out of the negatives, so
      they never appear in training at all.
    - ``eval_protocol: mmrec`` reproduces MMRec's two departures from RecBole: the test split
      masks only the user's train items (RecBole: train and valid items), and training
      negatives are drawn among the items that occur in the train split (RecBole: all
      items), still redrawn while in the user's train history.
    - The train sampler's rejection test is vectorised (same negatives).
    - ``train_sampling: user`` batches distinct users instead of interactions (see
      :func:`train_loader`).

    The first three are set on the train split's
    :class:`~recbole_mm.data.sampler.MultiModalSampler`; ``save_dataloaders`` saves the
    loaders with them.
    """
    protocol = config["eval_protocol"] or "recbole"
    if protocol not in EVAL_PROTOCOLS:
        raise ConfigError(f"eval_protocol must be one of {list(EVAL_PROTOCOLS)}, got {protocol!r}")
    if config["MODEL_TYPE"] not in (ModelType.GENERAL, ModelType.TRADITIONAL):
        return recbole_data_preparation(config, dataset)
    dataloaders = load_split_dataloaders(config)
    if dataloaders is not None:
        dataset._change_feat_format()
        return dataloaders
    built_datasets = dataset.build()
    train_dataset, valid_dataset, test_dataset = built_datasets
    train_sampler, valid_sampler, test_sampler = create_samplers(config, built_datasets)
    train_users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
    train_items = train_dataset.inter_feat[train_dataset.iid_field].numpy()
    if train_sampler is not None:
        train_sampler.count_train_split_only(train_items)
        excluded = []
        cold_items = getattr(train_dataset, "cold_items", None)
        if cold_items is not None:
            excluded.append(np.concatenate(cold_items))
        if protocol == "mmrec":
            excluded.append(np.setdiff1d(np.arange(1, train_dataset.item_num), train_items))
        if excluded:
            train_sampler.exclude_from_negatives(np.unique(np.concatenate(excluded)))
        train_sampler.vectorise_rejection()
    train_data = train_loader(config, train_dataset, train_sampler)
    valid_data = _eval_loader(config, "valid")(config, valid_dataset, valid_sampler, shuffle=False)
    test_data = _eval_loader(config, "test")(config, test_dataset, test_sampler, shuffle=False)
    if protocol == "mmrec":
        mask_train_history_only(test_data, train_users, train_items, train_dataset.user_num)
    if config["save_dataloaders"]:
        save_split_dataloaders(config, dataloaders=(train_data, valid_data, test_data))
    getLogger().info(
        set_color("[Training]: ", "pink") + f"train_batch_size = [{config['train_batch_size']}] "
        f"train_neg_sample_args: [{config['train_neg_sample_args']}]")
    getLogger().info(
        set_color("[Evaluation]: ", "pink") + f"eval_batch_size = [{config['eval_batch_size']}] "
        f"eval_args: [{config['eval_args']}]")
    return train_data, valid_data, test_data


def train_loader(config, train_dataset, train_sampler):
    """RecBole's train loader (``train_sampling: interaction``: every train interaction once per
    epoch), or batches of distinct users (``user``: :class:`~recbole_mm.data.dataloader.
    UserSampledTrainDataLoader`, the LATTICE / MICRO authors' sampler)."""
    sampling = config["train_sampling"] or "interaction"
    if sampling not in TRAIN_SAMPLINGS:
        raise ConfigError(f"train_sampling must be one of {list(TRAIN_SAMPLINGS)}, got {sampling!r}")
    if sampling == "user":
        return UserSampledTrainDataLoader(config, train_dataset, train_sampler, shuffle=True)
    loader = get_dataloader(config, "train")
    loader = DirectTrainDataLoader if loader is TrainDataLoader else loader
    return loader(config, train_dataset, train_sampler, shuffle=config["shuffle"])


def _eval_loader(config, phase):
    """RecBole's evaluation loader class for ``phase``; its full-sort one collated without a
    loop over the users (:class:`~recbole_mm.data.dataloader.VectorisedFullSortEvalDataLoader`)."""
    loader = get_dataloader(config, phase)
    return VectorisedFullSortEvalDataLoader if loader is FullSortEvalDataLoader else loader


def mask_train_history_only(eval_data, train_users, train_items, n_users):
    """Make a full-sort evaluation loader mask each user's train items only (MMRec's test
    ranking), in place of RecBole's history (every earlier split of the user).

    ``eval_data.uid2history_item[u]`` is what RecBole's ``FullSortEvalDataLoader`` masks for
    user ``u``; it becomes the train items of ``u`` (``train_users``/``train_items``: (E,)
    arrays of the train split), grouped by user with one stable sort.
    """
    if hasattr(eval_data, "set_history"):  # VectorisedFullSortEvalDataLoader: no per-user tensors
        eval_data.set_history(train_users, train_items)
        return
    if getattr(eval_data, "uid2history_item", None) is None:
        raise ConfigError("eval_protocol: mmrec needs full-sort evaluation (eval_args mode: full)")
    order = np.argsort(train_users, kind="stable")
    bounds = np.cumsum(np.bincount(train_users, minlength=n_users))[:-1]
    per_user = np.split(train_items[order].astype(np.int64), bounds)
    users = eval_data.uid_list.numpy() if torch.is_tensor(eval_data.uid_list) else np.asarray(eval_data.uid_list)
    history = np.empty(len(users), dtype=object)
    history[:] = [torch.from_numpy(per_user[u]) for u in users]
    eval_data.uid2history_item[users] = history


__all__ = [
    "create_dataset", "data_preparation", "MultiModalDataset", "DatasetNotFoundError",
    "FeatureFileError",
]
