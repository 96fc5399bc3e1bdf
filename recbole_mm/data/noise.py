"""Noise injection for denoising experiments (GUIDER §3.2, §5.5).

``noise_ratio: r`` adds round(r · |train|) random user–item pairs to the train split after the
split is made, so validation and test stay untouched. Users are drawn uniformly among the users
with train interactions, items uniformly among the real items (cold-start items excluded);
pairs that occur in any split, and repeats, are rejected. The injected pairs are recorded on
the train split as ``injected_pairs``: the sorted int64 keys ``user * item_num + item`` (None
when nothing was injected), which :func:`injected_mask` queries::

    train = train_data.dataset
    mask = injected_mask(users, items, train.injected_pairs, train.item_num)   # (n,) bool
"""
import numbers

import numpy as np
import torch
from recbole.data.interaction import Interaction

from recbole_mm.errors import ConfigError, DataError


def pair_keys(users, items, item_num):
    """int64 keys ``user * item_num + item`` (numpy)."""
    return np.asarray(users, dtype=np.int64) * int(item_num) + np.asarray(items, dtype=np.int64)


def injected_mask(users, items, injected_pairs, item_num):
    """(n,) bool: which (user, item) pairs were injected (torch or numpy in, same kind out).

    Args:
        users, items: (n,) internal ids.
        injected_pairs: sorted int64 keys (``train_dataset.injected_pairs``), or None.
        item_num: the dataset's ``item_num`` (the key stride).

    Membership by binary search of the keys ``user * item_num + item``: O(n log k).
    """
    as_torch = isinstance(users, torch.Tensor)
    u = users.cpu().numpy() if as_torch else np.asarray(users)
    i = items.cpu().numpy() if as_torch else np.asarray(items)
    if injected_pairs is None or len(injected_pairs) == 0:
        mask = np.zeros(len(u), dtype=bool)
    else:
        keys = pair_keys(u, i, item_num)
        position = np.searchsorted(injected_pairs, keys).clip(max=len(injected_pairs) - 1)
        mask = injected_pairs[position] == keys
    return torch.from_numpy(mask).to(users.device) if as_torch else mask


def checked_ratio(ratio):
    """``noise_ratio`` as a float in [0, 1), or a ValueError saying what was given."""
    valid = isinstance(ratio, numbers.Real) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0
    if not valid:
        raise ConfigError(f"noise_ratio must be a number in [0, 1) (the share of train rows to add "
                         f"as random pairs), got {ratio!r}")
    return float(ratio)


def draw_noise_pairs(train_users, candidate_items, existing_keys, n_pairs, item_num, seed):
    """``n_pairs`` distinct (user, item) pairs not in ``existing_keys`` (sorted), vectorised
    rejection sampling.

    Returns:
        (users, items): int64 numpy arrays, sorted by key.
    """
    rng = np.random.default_rng(seed)
    users_pool = np.unique(train_users)
    capacity = len(users_pool) * len(candidate_items) - len(existing_keys)
    if n_pairs > capacity:
        raise DataError(f"noise_ratio asks for {n_pairs} new pairs but only {capacity} unobserved pairs exist")
    chosen = np.zeros(0, dtype=np.int64)
    while len(chosen) < n_pairs:
        draw = 2 * (n_pairs - len(chosen)) + 16
        keys = pair_keys(rng.choice(users_pool, draw), rng.choice(candidate_items, draw), item_num)
        keys = keys[~np.isin(keys, existing_keys)]
        keys = np.unique(np.concatenate([chosen, keys]))
        chosen = keys if len(keys) <= n_pairs else rng.choice(keys, n_pairs, replace=False)
    chosen = np.sort(chosen)
    return chosen // item_num, chosen % item_num


def inject_noise(train, others, ratio, seed, excluded_items=None):
    """Add ``ratio`` · |train| random pairs to the ``train`` dataset in place (see the module
    docstring) and record them in ``train.injected_pairs``.

    Args:
        train: the train split (a RecBole Dataset whose inter_feat is an Interaction).
        others: the other splits (their pairs are never injected).
        excluded_items: item ids never to inject (held-out cold-start items).

    Returns:
        the number of injected pairs.
    """
    ratio = checked_ratio(ratio)
    uid, iid, item_num = train.uid_field, train.iid_field, train.item_num
    feat = train.inter_feat
    n_pairs = int(round(ratio * len(feat)))
    train.injected_pairs = None
    if n_pairs == 0:
        return 0
    existing = np.unique(np.concatenate([
        pair_keys(split.inter_feat[uid].numpy(), split.inter_feat[iid].numpy(), item_num)
        for split in [train, *others]
    ]))
    candidates = np.arange(1, item_num)
    if excluded_items is not None and len(excluded_items):
        candidates = np.setdiff1d(candidates, excluded_items)
    users, items = draw_noise_pairs(feat[uid].numpy(), candidates, existing, n_pairs, item_num, seed)
    # the other fields (x_label, label, rating, timestamp) copy those of random train rows,
    # so an injected row looks like any train row except for its pair
    template_rows = torch.from_numpy(np.random.default_rng(seed + 1).integers(0, len(feat), n_pairs))
    columns = {field: feat[field][template_rows] for field in feat.columns}
    columns[uid], columns[iid] = torch.from_numpy(users), torch.from_numpy(items)
    # column by column in train's order (RecBole's cat_interactions orders them by a set)
    train.inter_feat = Interaction({field: torch.cat([feat[field], columns[field]]) for field in feat.columns})
    train.injected_pairs = pair_keys(users, items, item_num)
    return n_pairs
