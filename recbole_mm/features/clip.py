"""CLIP item features: an item table (id, image, text) -> the ``clip`` modality of a dataset.

Input: a CSV/TSV table with one row per item and (by default) the columns ``item_id``,
``image`` (a path; relative paths are resolved against ``image_root``, by default the
table's folder) and ``text``. Output, in ``out_dir``::

    clip_feat.npy    float32 (n_items x d); row k = the k-th item (data row) of the table
    clip_items.txt   one item token per line; line k = item of row k

which a dataset config reads with::

    modality_files: {clip: clip_feat.npy}
    feature_id_map: clip_items.txt

Each item's image goes through ``CLIPModel.get_image_features`` and its text through
``get_text_features`` (truncated to the model's maximum length); both are L2-normalised and
combined by ``combine``:

    ``mean``   (image + text) / 2, d = projection_dim (the default; not renormalised)
    ``image``  the normalised image embedding, d = projection_dim
    ``text``   the normalised text embedding, d = projection_dim
    ``concat`` [image, text], d = 2 * projection_dim (each half has unit norm)

Only the columns that ``combine`` needs are required (``text`` needs no images).

Resuming: each batch of ``batch_size`` consecutive table rows is written as
``<out_dir>/.clip_feat.partial/batch_<index>.npy`` beside ``manifest.json`` (table digest,
model, combine, batch size). A run with the same arguments recomputes only the batches that
have no shard; when all are present the final files are assembled under temporary names,
moved into place with ``os.replace`` and the staging folder is removed.

Command line::

    python -m recbole_mm.features.clip --items items.csv --out dataset/mydata \\
        --model openai/clip-vit-base-patch32 --combine mean --batch-size 32 --device cpu
"""
import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile

import numpy as np

from recbole_mm.errors import ConfigError, DataError, OutputExistsError
from recbole_mm.features.item_table import (
    add_common_arguments,
    check_images,
    default_device,
    read_item_table,
    resolve_image_paths,
    run_command,
)

from recbole_mm.files import atomic_write, discard, staged_path, write_staged

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
COMBINE_MODES = ("mean", "image", "text", "concat")
FEATURE_FILE = "clip_feat.npy"
ID_FILE = "clip_items.txt"
STAGING_DIR = ".clip_feat.partial"
MANIFEST_FILE = "manifest.json"
MANIFEST_KEYS = ("format", "table_digest", "n_items", "model", "combine", "batch_size")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- columns
def uses_images(combine):
    """True when ``combine`` needs the image embedding."""
    return combine in ("mean", "image", "concat")


def uses_text(combine):
    """True when ``combine`` needs the text embedding."""
    return combine in ("mean", "text", "concat")


def table_digest(item_ids, image_paths, texts):
    """sha256 of what the features depend on: ids, texts, image paths with size and mtime.

    ``image_paths``/``texts`` are ``None`` when ``combine`` does not use them.
    """
    digest = hashlib.sha256()
    for name, values in (("ids", item_ids), ("texts", texts)):
        if values is not None:
            digest.update(json.dumps([name, list(values)]).encode("utf-8"))
    if image_paths is not None:
        stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in image_paths]
        digest.update(json.dumps(["images", stats]).encode("utf-8"))
    return digest.hexdigest()


# ---------------------------------------------------------------------------- model
def load_clip(model_name_or_path, model=None, processor=None):
    """``(CLIPModel, CLIPProcessor)``; loads from ``model_name_or_path`` what is not given."""
    from transformers import CLIPModel, CLIPProcessor

    if model is None:
        model = CLIPModel.from_pretrained(model_name_or_path)
    if processor is None:
        processor = CLIPProcessor.from_pretrained(model_name_or_path)
    return model, processor


def model_label(model_name_or_path, model=None):
    """The model's name recorded in the staging manifest: ``model_name_or_path`` unless a
    model object with a ``name_or_path`` of its own is passed."""
    own = getattr(model, "name_or_path", "") if model is not None else ""
    return str(own or model_name_or_path)


def text_max_length(model, tokenizer):
    """Longest token sequence the text tower accepts (position embeddings), capped by the
    tokenizer's ``model_max_length``."""
    config = getattr(model.config, "text_config", model.config)
    limit = int(getattr(config, "max_position_embeddings", 77))
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
        limit = tokenizer_limit
    return limit


def pooled_embedding(output):
    """The projected embedding from ``get_image_features``/``get_text_features``.

    transformers 4.x returns a (b x p) tensor; 5.x returns ``BaseModelOutputWithPooling``
    whose ``pooler_output`` holds the projection (b x p).
    """
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None and isinstance(output, (tuple, list)) and len(output) > 1:
        pooled = output[1]
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"Unexpected CLIP feature output of type {type(output).__name__}.")
    return pooled


def load_images(item_ids, paths):
    """Open one batch of images as RGB ``PIL.Image`` objects (list, batch order).

    Raises:
        ValueError: an image cannot be decoded (message: item id and path).
    """
    from PIL import Image

    def open_rgb(item_id, path):
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise DataError(f"Item {item_id!r}: cannot read image {path} ({error}).") from error

    return [open_rgb(item_id, path) for item_id, path in zip(item_ids, paths)]


def image_embeddings(model, processor, images, device):
    """L2-normalised image embeddings, float32 tensor (b x p) on ``device``."""
    import torch.nn.functional as F

    image_processor = getattr(processor, "image_processor", processor)
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    pixels = pixels.to(device=device, dtype=model.dtype)
    return F.normalize(pooled_embedding(model.get_image_features(pixel_values=pixels)).float(), dim=-1)


def text_embeddings(model, processor, texts, device):
    """L2-normalised text embeddings, float32 tensor (b x p) on ``device``; texts longer
    than the model's maximum length are truncated."""
    import torch.nn.functional as F

    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = tokenizer(list(texts), padding=True, truncation=True,
                       max_length=text_max_length(model, tokenizer), return_tensors="pt")
    output = model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                     attention_mask=tokens["attention_mask"].to(device))
    return F.normalize(pooled_embedding(output).float(), dim=-1)


def combine_embeddings(image, text, combine):
    """Combine (b x p) normalised embeddings (``None`` when unused) -> (b x d) tensor."""
    import torch

    if combine == "mean":
        return (image + text) / 2
    if combine == "concat":
        return torch.cat([image, text], dim=1)
    return image if combine == "image" else text


def encode_batch(model, processor, item_ids, image_paths, texts, combine, device):
    """Features of one batch of items.

    Args:
        item_ids: list of b item tokens (for error messages).
        image_paths: list of b image paths, or ``None`` when ``combine`` uses no images.
        texts: list of b texts, or ``None`` when ``combine`` uses no text.

    Returns:
        np.ndarray float32, shape (b, d): d = projection_dim, 2 * projection_dim for concat.
    """
    import torch

    with torch.no_grad():
        image = text = None
        if uses_images(combine):
            image = image_embeddings(model, processor, load_images(item_ids, image_paths), device)
        if uses_text(combine):
            text = text_embeddings(model, processor, texts, device)
        features = combine_embeddings(image, text, combine)
    return features.cpu().numpy().astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- staging
def shard_path(staging, index):
    """File of batch ``index`` in the staging folder."""
    return os.path.join(staging, f"batch_{index:06d}.npy")


def read_manifest(staging):
    """The staging folder's manifest dict, or ``None`` when missing/unreadable."""
    try:
        with open(os.path.join(staging, MANIFEST_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def prepare_staging(out_dir, manifest, overwrite):
    """Reuse ``<out_dir>/.clip_feat.partial`` when its manifest matches, else create it.

    A staging folder made with other arguments (or without a readable manifest) raises
    ``ValueError`` unless ``overwrite`` is true, in which case it is discarded. A new folder is
    created under a temporary name with its manifest and renamed, so it never lacks one.

    Returns:
        str, the staging folder.
    """
    staging = os.path.join(out_dir, STAGING_DIR)
    if os.path.isdir(staging):
        found = read_manifest(staging)
        if found is not None and all(found.get(key) == manifest[key] for key in MANIFEST_KEYS):
            return staging
        if not overwrite:
            differing = sorted(key for key in MANIFEST_KEYS
                               if found is None or found.get(key) != manifest[key])
            raise DataError(
                f"{staging} holds partial CLIP features made with other arguments or another "
                f"item table (differing: {differing}); rerun with the same arguments to resume, "
                "or with overwrite=True (--overwrite) to discard it."
            )
        logger.info("discarding %s (made with other arguments)", staging)
        shutil.rmtree(staging)
    fresh = tempfile.mkdtemp(prefix=".clip_feat.new-", dir=out_dir)
    with open(os.path.join(fresh, MANIFEST_FILE), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(fresh, staging)
    return staging


def save_shard(path, features):
    """Write one batch (b x d float32) atomically: temporary file, then ``os.replace``."""
    atomic_write(path, lambda handle: np.save(handle, features))


def shard_is_complete(path, n_rows):
    """True when ``path`` is a readable (n_rows x d) float32 shard."""
    try:
        shard = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return shard.ndim == 2 and shard.shape[0] == n_rows and shard.dtype == np.float32


def batch_bounds(n_items, batch_size):
    """``[(start, stop), ...]`` of the batches of consecutive rows."""
    return [(start, min(start + batch_size, n_items)) for start in range(0, n_items, batch_size)]


def compute_batches(model, processor, staging, bounds, todo, item_ids, image_paths, texts,
                    combine, device):
    """Encode the batches listed in ``todo`` and save each as its shard (b x d float32).

    Args:
        bounds: ``[(start, stop), ...]`` row ranges of all batches.
        todo: indexes into ``bounds`` still to compute.
        item_ids, image_paths, texts: per-item lists (``None`` for an unused modality).
    """
    for done, index in enumerate(todo, 1):
        rows = slice(*bounds[index])
        features = encode_batch(
            model, processor, item_ids[rows],
            image_paths[rows] if image_paths is not None else None,
            texts[rows] if texts is not None else None, combine, device,
        )
        save_shard(shard_path(staging, index), features)
        logger.info("batch %d/%d done (%d of %d left)", index + 1, len(bounds), len(todo) - done,
                    len(todo))


def assemble(staging, bounds, out_dir, item_ids):
    """Concatenate the shards into ``clip_feat.npy`` and write ``clip_items.txt``, each under a
    temporary name then ``os.replace``; then remove the staging folder.

    Returns:
        str, the path of ``clip_feat.npy``.
    """
    shards = [np.load(shard_path(staging, index), mmap_mode="r") for index in range(len(bounds))]
    dims = {shard.shape[1] for shard in shards}
    if len(dims) != 1:
        raise DataError(f"{staging}: batch shards disagree on the feature dimension {sorted(dims)}.")
    feature_path = os.path.join(out_dir, FEATURE_FILE)
    id_path = os.path.join(out_dir, ID_FILE)
    feature_tmp = staged_path(feature_path)  # temporaries of this writer's own (mkstemp)
    try:
        matrix = np.lib.format.open_memmap(feature_tmp, mode="w+", dtype=np.float32,
                                           shape=(len(item_ids), dims.pop()))
        for (start, stop), shard in zip(bounds, shards):
            matrix[start:stop] = shard
        matrix.flush()
        del matrix, shards
        text = ("\n".join(item_ids) + "\n").encode("utf-8")
        os.replace(write_staged(id_path, lambda handle: handle.write(text)), id_path)
        os.replace(feature_tmp, feature_path)
    except BaseException:
        discard(feature_tmp)
        raise
    shutil.rmtree(staging)
    return feature_path


# ---------------------------------------------------------------------------- entry points
def extract_clip_features(item_table, out_dir, model_name_or_path=DEFAULT_MODEL, combine="mean",
                          batch_size=32, device=None, image_root=None, overwrite=False,
                          id_column="item_id", image_column="image", text_column="text",
                          model=None, processor=None, delimiter=None):
    """Write ``clip_feat.npy`` (row k = k-th item of ``item_table``) and ``clip_items.txt``.

    Args:
        item_table: CSV/TSV path with columns ``id_column``, ``image_column`` and
            ``text_column`` (only those ``combine`` needs are required).
        out_dir: dataset folder receiving the two files (created if needed).
        model_name_or_path: hub id or local folder of a CLIP model and its processor.
        combine: ``"mean"``, ``"image"``, ``"text"`` or ``"concat"`` (see the module doc).
        batch_size: items per forward pass and per resumable shard.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.
        image_root: folder for relative image paths; default the table's folder.
        overwrite: replace existing output files and discard a staging folder made with
            other arguments.
        model, processor: an already built ``CLIPModel``/``CLIPProcessor`` (else loaded from
            ``model_name_or_path``); the model is put in eval mode and moved to ``device``.
        delimiter: column separator of the table; default sniffed from its header line.

    Returns:
        str, the path of ``clip_feat.npy``: float32 array (n_items x d), d = projection_dim
        (2 * projection_dim for ``concat``).

    Raises:
        ValueError: bad ``combine``/``batch_size``, missing columns, duplicate ids, unreadable
            images, a staging folder from other arguments (without ``overwrite``).
        FileNotFoundError: missing table or image files (names the item ids and paths).
        FileExistsError: an output file exists and ``overwrite`` is false.
    """
    if combine not in COMBINE_MODES:
        raise ConfigError(f"combine must be one of {COMBINE_MODES}, got {combine!r}.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batch_size = int(batch_size)
    item_table = os.path.abspath(item_table)
    required = [id_column] + ([image_column] if uses_images(combine) else []) \
        + ([text_column] if uses_text(combine) else [])
    frame = read_item_table(item_table, required, delimiter)
    item_ids = frame[id_column].tolist()
    texts = frame[text_column].tolist() if uses_text(combine) else None
    image_paths = None
    if uses_images(combine):
        root = image_root if image_root is not None else os.path.dirname(item_table)
        image_paths = resolve_image_paths(frame[image_column].tolist(), root)
        check_images(item_ids, image_paths, item_table)

    os.makedirs(out_dir, exist_ok=True)
    existing = [os.path.join(out_dir, name) for name in (FEATURE_FILE, ID_FILE)
                if os.path.exists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(existing)} already exist(s); pass overwrite=True (--overwrite) to replace."
        )
    manifest = {
        "format": 1, "table_digest": table_digest(item_ids, image_paths, texts),
        "n_items": len(item_ids), "model": model_label(model_name_or_path, model),
        "combine": combine, "batch_size": batch_size, "item_table": item_table,
    }
    staging = prepare_staging(out_dir, manifest, overwrite)
    bounds = batch_bounds(len(item_ids), batch_size)
    todo = [index for index, (start, stop) in enumerate(bounds)
            if not shard_is_complete(shard_path(staging, index), stop - start)]
    logger.info("%d items, %d batches, %d to compute", len(item_ids), len(bounds), len(todo))
    if todo:
        model, processor = load_clip(model_name_or_path, model, processor)
        device = device or default_device()
        model = model.to(device).eval()
        compute_batches(model, processor, staging, bounds, todo, item_ids, image_paths, texts,
                        combine, device)
    return assemble(staging, bounds, out_dir, item_ids)


def build_parser():
    """argparse parser of the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mm.features.clip",
        description="Write <out>/clip_feat.npy (row k = k-th item of the table) and "
                    "<out>/clip_items.txt (line k = its item token) with a CLIP model.",
    )
    add_common_arguments(parser, "CSV/TSV item table")
    parser.add_argument("--out", required=True, help="output (dataset) folder")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="CLIP model id or local path")
    parser.add_argument("--combine", default="mean", choices=COMBINE_MODES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-root", default=None,
                        help="folder for relative image paths (default: the table's folder)")
    parser.add_argument("--id-column", default="item_id")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs / discard a mismatched partial run")
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit code (2 for input errors)."""
    args = build_parser().parse_args(argv)
    code, path = run_command(
        extract_clip_features,
        args.items, args.out, model_name_or_path=args.model, combine=args.combine,
        batch_size=args.batch_size, device=args.device, image_root=args.image_root,
        overwrite=args.overwrite, id_column=args.id_column, image_column=args.image_column,
        text_column=args.text_column, delimiter=args.delimiter,
    )
    if code == 0:
        print(path)
    return code


if __name__ == "__main__":
    sys.exit(main())
