"""The bundled ``synthetic`` dataset: interactions and item features with planted structure.

Generative story (all from one seed, so the same arguments always give the same files):

- user factors ``P`` (U x k) and item factors ``Q`` (I x k), standard normal;
- item popularity ``b_i`` ~ N(0, 1); user ``u`` picks ``n_u`` distinct items (``n_u`` from a
  shifted Poisson) with probability proportional to
  ``exp(sharpness * <P_u, Q_i> / sqrt(k) + popularity_skew * b_i)``
  (Gumbel top-n sampling: a softmax choice without replacement);
- each modality m has features ``signal_m * Q M_m + nuisance_m * Z_m N_m + noise_m * E``:
  a modality-specific linear map of the item factors, modality-specific nuisance factors
  ``Z_m`` that carry no preference signal, and white noise. By default text is the more
  informative modality (higher signal, lower nuisance), as in real Amazon data.
  ``normalize: true`` in a modality's spec L2-normalises each feature row (unit norm, as the
  embeddings of CLIP and most pre-trained encoders are); ``clip_synthetic`` sets it for its
  simulated CLIP embeddings, whose raw rows would otherwise have squared norm ~2,700.
- ``layout: mmrec`` (default): a random per-user 8:1:1 split (at least one valid and one
  test item) in MMRec's folder layout; ``layout: atomic``: a RecBole atomic ``.inter`` with
  a per-user random ``timestamp`` order instead (for leave-one-out by time, NF-VLM's
  protocol) and a ``<token>.item`` file listing every item token, so that items nobody
  interacted with are still loaded and ranked as candidates (RecBole otherwise keeps only
  the items of ``.inter``). Feature row i belongs to item token i in both layouts.

A folder written by an older generator version or with other arguments is regenerated on
next use (``synthetic_meta.json`` records both), never silently reused.

The long tail produced by the popularity skew leaves many items with few training
interactions, where content features help: content-aware models beat ID-only ones here.
"""
import json
import os
import shutil
import tempfile

import numpy as np

from recbole_mm.errors import ConfigError
from recbole_mm.mmrec_format import write_mmrec_inter

DEFAULTS = {
    "seed": 2026,
    "n_users": 2000,
    "n_items": 1500,
    "latent_dim": 16,
    "mean_interactions": 15,
    "min_interactions": 5,
    "sharpness": 3.0,
    "popularity_skew": 1.0,
    "layout": "mmrec",
    "modalities": {
        "text": {"dim": 64, "signal": 1.0, "nuisance": 0.5, "noise": 0.5, "nuisance_dim": 16, "normalize": False},
        "image": {"dim": 128, "signal": 0.6, "nuisance": 1.5, "noise": 0.8, "nuisance_dim": 16, "normalize": False},
        # a CLIP-like joint embedding: the preference signal lies beneath higher-variance
        # nuisance directions (NF-VLM's premise)
        "clip": {"dim": 128, "signal": 1.0, "nuisance": 2.0, "noise": 0.5, "nuisance_dim": 32, "normalize": False},
    },
}
META_FILE = "synthetic_meta.json"
FACTORS_FILE = "planted_factors.npz"
# 2: per-modality ``normalize``; atomic layout writes ``<token>.item`` with every item token
GENERATOR_VERSION = 2


def resolve_arguments(arguments=None):
    """Defaults overridden by ``arguments`` (a dict; modality entries merge per key, and a
    modality given as ``None`` is dropped, e.g. ``{"text": None, "image": None, "clip": {...}}``)."""
    merged = json.loads(json.dumps(DEFAULTS))
    template = DEFAULTS["modalities"]["text"]
    for key, value in dict(arguments or {}).items():
        if key == "modalities":
            for name, spec in value.items():
                if spec is None:
                    merged["modalities"].pop(name, None)
                else:
                    merged["modalities"][name] = {**merged["modalities"].get(name, template), **spec}
        elif key not in DEFAULTS:
            raise ConfigError(f"synthetic_generator: unknown argument '{key}' (known: {sorted(DEFAULTS)})")
        else:
            merged[key] = value
    if merged["layout"] not in ("mmrec", "atomic"):
        raise ConfigError(f"synthetic_generator: layout must be 'mmrec' or 'atomic', got {merged['layout']!r}")
    return merged


def sample_interactions(rng, user_factors, item_factors, popularity, counts, sharpness, skew, chunk=1024,
                        budget_elements=2 ** 23):
    """Each user's chosen items, drawn without replacement by Gumbel top-n.

    Users are processed in blocks of at most ``chunk`` users and ``budget_elements`` logits
    (64 MB of float64 by default), so memory stays bounded on a large catalogue: never a
    users x items matrix. The Gumbel noise is drawn block after block from one stream, so the
    block size does not change the result.

    Returns:
        (users, items): int64 arrays, one entry per interaction, grouped by user.
    """
    n_users, k = user_factors.shape
    n_items = item_factors.shape[0]
    chunk = max(1, min(int(chunk), int(budget_elements) // max(n_items, 1)))
    max_count = int(counts.max())
    users, items = [], []
    for start in range(0, n_users, chunk):
        block = slice(start, min(start + chunk, n_users))
        logits = sharpness * (user_factors[block] @ item_factors.T) / np.sqrt(k) + skew * popularity
        logits += rng.gumbel(size=logits.shape)
        top = np.argpartition(-logits, max_count - 1, axis=1)[:, :max_count]
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(max_count)[None, :] < counts[block][:, None]
        rows = np.broadcast_to(np.arange(block.start, block.stop)[:, None], top.shape)
        users.append(rows[keep])
        items.append(top[keep])
        del logits
    return np.concatenate(users), np.concatenate(items)


def split_labels(rng, users, counts):
    """MMRec-style random per-user split: x_label 0/1/2, with max(1, n // 10) valid and test rows."""
    shuffled_rank = np.empty(len(users), dtype=np.int64)
    order = np.lexsort((rng.random(len(users)), users))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    shuffled_rank[order] = np.arange(len(users)) - np.repeat(starts, counts)
    held = np.maximum(1, counts // 10)[users]
    return np.where(shuffled_rank < held, 2, np.where(shuffled_rank < 2 * held, 1, 0))


def write_atomic_inter(path, rng, users, items):
    """RecBole atomic ``.inter`` with a random per-user time order (``timestamp:float``)."""
    import pandas as pd

    timestamps = rng.permutation(len(users)).astype(np.float64)
    frame = pd.DataFrame({"user_id:token": users, "item_id:token": items, "timestamp:float": timestamps})
    frame.to_csv(path, sep="\t", index=False)


def write_atomic_item(path, n_items):
    """RecBole atomic ``.item`` file with one row per item token 0 .. n_items - 1."""
    import pandas as pd

    pd.DataFrame({"item_id:token": np.arange(n_items)}).to_csv(path, sep="\t", index=False)


def modality_features(rng, item_factors, spec, out=None, budget_elements=2 ** 22):
    """``signal * Q M + nuisance * Z N + noise * E`` for one modality, each row then scaled to
    unit L2 norm when ``spec["normalize"]`` (a positive per-item scale, so the planted
    subspace is unchanged and each item's direction is kept).

    Computed in blocks of items (at most ``budget_elements`` float64 values at a time) and
    written as float32 into ``out`` (an (I x dim) float32 array, e.g. a memory-mapped ``.npy``
    file; a new array when ``None``), so a 100,000 x 4,096 catalogue never exists in float64.
    The white noise ``E`` is drawn block after block from one stream, so the block size does
    not change the result.

    Returns:
        (features, signal_map): float32 (I x dim) (``out`` when given) and the planted map M
        (k x dim), whose row space is the modality's preference-signal subspace.
    """
    n_items, k = item_factors.shape
    dim, nuisance_dim = int(spec["dim"]), int(spec["nuisance_dim"])
    signal_map = rng.standard_normal((k, dim)) / np.sqrt(k)
    nuisance_map = rng.standard_normal((nuisance_dim, dim)) / np.sqrt(nuisance_dim)
    nuisance = rng.standard_normal((n_items, nuisance_dim))
    if out is None:
        out = np.empty((n_items, dim), dtype=np.float32)
    if out.shape != (n_items, dim) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(n_items, dim)}, got {out.dtype} {out.shape}")
    rows = max(1, int(budget_elements) // max(dim, 1))
    for start in range(0, n_items, rows):
        block = slice(start, min(start + rows, n_items))
        values = spec["signal"] * item_factors[block] @ signal_map
        values += spec["nuisance"] * nuisance[block] @ nuisance_map
        values += spec["noise"] * rng.standard_normal((block.stop - block.start, dim))
        if spec.get("normalize"):
            values /= np.linalg.norm(values, axis=1, keepdims=True)
        out[block] = values
    return out, signal_map


def generate_synthetic(folder, token="synthetic", arguments=None):
    """Write the dataset folder: ``<token>.inter`` (and ``<token>.item`` in the atomic layout),
    ``<modality>_feat.npy`` per modality, the planted factors (``planted_factors.npz``) and ``synthetic_meta.json``.

    Returns:
        dict: the resolved generator arguments.
    """
    args = resolve_arguments(arguments)
    rng = np.random.default_rng(args["seed"])
    k, n_users, n_items = args["latent_dim"], args["n_users"], args["n_items"]
    user_factors = rng.standard_normal((n_users, k))
    item_factors = rng.standard_normal((n_items, k))
    popularity = rng.standard_normal(n_items)
    counts = args["min_interactions"] + rng.poisson(
        max(args["mean_interactions"] - args["min_interactions"], 0), n_users
    )
    counts = np.minimum(counts, n_items)
    users, items = sample_interactions(
        rng, user_factors, item_factors, popularity, counts, args["sharpness"], args["popularity_skew"]
    )
    labels = split_labels(rng, users, counts) if args["layout"] == "mmrec" else None

    os.makedirs(os.path.dirname(os.path.abspath(folder)) or ".", exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{token}-", dir=os.path.dirname(os.path.abspath(folder)))
    signal_maps = {}
    for name, spec in args["modalities"].items():  # straight into the .npy files, block by block
        matrix = np.lib.format.open_memmap(os.path.join(staging, f"{name}_feat.npy"), mode="w+",
                                           dtype=np.float32, shape=(n_items, int(spec["dim"])))
        _, signal_maps[f"{name}_signal_map"] = modality_features(rng, item_factors, spec, out=matrix)
        matrix.flush()
        del matrix
    if labels is None:
        write_atomic_inter(os.path.join(staging, f"{token}.inter"), rng, users, items)
        write_atomic_item(os.path.join(staging, f"{token}.item"), n_items)
    else:
        write_mmrec_inter(os.path.join(staging, f"{token}.inter"), users, items, labels)
    np.savez(
        os.path.join(staging, FACTORS_FILE),
        user_factors=user_factors, item_factors=item_factors, popularity=popularity, **signal_maps,
    )
    with open(os.path.join(staging, META_FILE), "w", encoding="utf-8") as handle:
        json.dump({"version": GENERATOR_VERSION, "arguments": args}, handle, indent=2, sort_keys=True)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return args


def ensure_synthetic_dataset(folder, token, arguments):
    """Generate the dataset into ``folder`` unless an identical one is there.

    A folder without ``synthetic_meta.json`` is somebody's own data: it is used as it is and
    never overwritten. A folder this generator wrote with other arguments, or by another
    ``GENERATOR_VERSION`` (e.g. unnormalised features, no ``.item`` file), is regenerated.
    """
    wanted = {"version": GENERATOR_VERSION, "arguments": resolve_arguments(arguments)}
    meta_path = os.path.join(folder, META_FILE)
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(meta_path):
        return False
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as handle:
            if json.load(handle) == wanted:
                return False
    generate_synthetic(folder, token, arguments)
    return True
