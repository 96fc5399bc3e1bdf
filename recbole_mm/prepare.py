"""Build a dataset folder in MMRec's layout from raw interactions and an item table.

Command line::

    python -m recbole_mm.prepare --interactions reviews_Baby_5.json.gz --items meta_Baby.json.gz \\
        --name baby_mine --data-path dataset

writes ``dataset/baby_mine/`` and prints a summary ending in the command that trains on it::

    python run_recbole_mm.py --model=FREEDOM --dataset=baby_mine --data_path=dataset

Inputs
------
``--interactions``: CSV/TSV (delimiter sniffed), JSON lines, or an Amazon review dump: the 2014
``reviews_<Category>_5.json(.gz)`` (``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``)
or the 2018 ``<Category>.json.gz`` (same keys). Gzip is read directly (recognised by its magic
bytes, whatever the name). Columns: ``--user-col``, ``--item-col``, ``--rating-col``,
``--time-col``; unset, the usual names are looked for (``user_id``/``userID``/``user``/
``reviewerID``, ``item_id``/``itemID``/``item``/``asin``, ``rating``/``overall``,
``timestamp``/``unixReviewTime``/``time``). RecBole's typed headers (``user_id:token``) match
their plain names.

``--items``: CSV/TSV/JSON lines, or Amazon's ``meta_<Category>.json(.gz)`` (2014: Python-literal
lines, read with ``ast.literal_eval``; 2018: JSON). Columns ``--item-id-col`` (default
``asin``/``item_id``/...), ``title``, ``description``, ``categories``/``category``, ``brand``,
and an image: ``--image-col`` (default ``image``/``imUrl``/``imageURLHighRes``/``imageURL``;
a list keeps its first entry), a URL (downloaded) or a path (relative to ``--image-root``,
default the item table's folder). ``--items`` is optional: without it there are no features.

Steps
-----
1. Read; drop rows below ``--min-rating`` (when set); duplicated user-item pairs keep their
   latest row.
2. Items absent from the item table: ``--missing-items error`` (default: stop, exit 2, saying
   how many), ``drop`` (their interactions) or ``keep`` (as items without content).
   Items with neither text nor image: kept, or dropped with ``--drop-contentless``.
3. k-core (``--kcore 5``; ``--user-kcore``/``--item-kcore`` apart): users and items with fewer
   interactions removed, repeated until nothing changes (vectorised).
4. Images: URLs downloaded concurrently (``--download-workers`` threads, ``--retries``,
   ``--timeout`` seconds, ``--max-image-bytes``, the Content-Type must be ``image/*`` and PIL
   must read the bytes) into the cache (``--cache-dir``, default
   ``<data-path>/.recbole_mm_prepare_cache``); a rerun reuses what is cached and does not retry
   the recorded failures unless ``--retry-failed``. Failures are counted, never fatal.
   Items left without an image follow ``--missing-image``: ``mean`` (default, MMRec's: the mean
   of the other rows), ``zero`` (a zero row) or ``drop`` (the items are dropped and the k-core
   run again). ``image_mask.npy`` (bool, one per item, True = has an image) is written either way.
5. Ids: users and items renumbered 0..n-1 (sorted by token); ``u_id_mapping.csv`` and
   ``i_id_mapping.csv`` (tab-separated: original token, new id) map them back.
6. Split into ``x_label`` (``--split``): ``mmrec`` (default) per user 8:1:1 with at least one
   valid and one test item (users with fewer than 3 interactions: all train); chronological
   (latest to test) when timestamps exist, else a random order seeded by ``--seed``. ``random``:
   every interaction drawn into 8:1:1 at random (``--ratios``). ``loo``: leave-one-out, each
   user's last item (by time, else random) to test and the one before to valid.
7. Features, with the existing tools (:mod:`recbole_mm.features`):
   ``text_feat.npy``: MMRec's text (title, brand, first category path, description;
   ``--text-template "{title} ({year}). {genres}"`` for another) encoded by
   :class:`~recbole_mm.features.text.SentenceEncoder` (all-MiniLM-L6-v2, 384-d; ``--text-model``);
   ``image_feat.npy``: ``--image-model`` (a CLIP model: its image embedding through
   :func:`~recbole_mm.features.clip.extract_clip_features`; any other transformers vision model:
   its pooled output); ``--clip`` adds ``clip_feat.npy``, CLIP's mean of image and text
   embeddings (NF-VLM; text only where an item has no image); ``--vlm-model`` adds
   ``image_feat_vlm.npy``, VLIF's encoded VLM descriptions (:mod:`recbole_mm.features.vlm`).
   Every encoded matrix is cached (keyed by the model and its inputs): a rerun encodes nothing,
   and an interrupted CLIP encoding resumes from the batches it finished.
   ``--no-text`` / ``--no-images`` skip a modality.

Everything is written into a temporary folder beside the target and moved into place at the
end; a target that holds another dataset is refused unless ``--overwrite``; one prepared with
the same inputs and arguments is left as it is. ``prepare_meta.json`` records them.

Bad input ends in one line, ``error: <message>`` naming the file (and line), exit status 2.

Python: :func:`prepare_dataset` takes the same options as keyword arguments (and model objects:
``text_encoder``, ``image_model``/``image_processor``) and returns a :class:`PrepareResult`.
"""
import argparse
import ast
import concurrent.futures
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recbole_mm.mmrec_format import MMREC_ITEM, MMREC_LABEL, MMREC_USER
from recbole_mm.errors import ConfigError, DataError

try:  # optional: about three times faster than json on review dumps
    import orjson as _fast_json
except ImportError:  # pragma: no cover
    _fast_json = None

logger = logging.getLogger(__name__)

META_FILE = "prepare_meta.json"
META_VERSION = 1
SPLITS = ("mmrec", "random", "loo")
MISSING_ITEMS = ("error", "drop", "keep")
MISSING_IMAGE = ("mean", "zero", "drop")
DEFAULT_IMAGE_MODEL = "openai/clip-vit-base-patch32"
USER_COLUMNS = ("user_id", "userID", "user", "reviewerID")
ITEM_COLUMNS = ("item_id", "itemID", "item", "asin")
RATING_COLUMNS = ("rating", "overall")
TIME_COLUMNS = ("timestamp", "unixReviewTime", "time")
ITEM_ID_COLUMNS = ("asin", "item_id", "itemID", "item", "parent_asin")
IMAGE_COLUMNS = ("image", "imUrl", "imageURLHighRes", "imageURL", "image_url", "image_path")
CATEGORY_COLUMNS = ("categories", "category")
CONTENT_TYPES_OK = ("image/",)


class PrepareError(DataError):
    """A bad input of :func:`prepare_dataset`; the message is one line naming the file."""


class DownloadFailed(Exception):
    """One image URL could not be used (counted, never fatal); the message is the reason."""


# ============================================================================ reading
def _open_text(path):
    """A text handle on ``path``, gunzipped when it starts with gzip's magic bytes."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8-sig", errors="replace")


def _check_file(path, what):
    if not path or not os.path.isfile(path):
        raise PrepareError(f"{what} file {path} not found")
    if os.path.getsize(path) == 0:
        raise PrepareError(f"{what} file {path} is empty")


def _is_json_lines(path):
    """True when the first non-blank line starts with ``{`` (JSON or a Python dict literal)."""
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def _parse_line(line, path, number):
    """One record of a JSON-lines file (``line`` is bytes): JSON (orjson when installed), else a
    Python dict literal (the 2014 Amazon meta files)."""
    if _fast_json is not None:
        try:
            return _fast_json.loads(line)
        except _fast_json.JSONDecodeError:
            pass
    try:
        return json.loads(line)
    except ValueError as json_error:
        try:  # the 2014 Amazon meta files: one Python dict literal per line
            value = ast.literal_eval(line.decode("utf-8", errors="replace").strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            reason = " ".join(str(json_error).split())
            raise PrepareError(f"{path}: unparseable JSON on line {number} ({reason})") from None
        if not isinstance(value, dict):
            raise PrepareError(f"{path}: line {number} is not a JSON object") from None
        return value


def _strip_type(name):
    """RecBole's typed header ``user_id:token`` -> ``user_id``."""
    return name.split(":", 1)[0] if ":" in name else name


def _pick_column(path, columns, wanted, candidates, what, required):
    """The column named ``wanted`` (or the first of ``candidates`` present when it is None)."""
    plain = {_strip_type(column): column for column in columns}
    if wanted is not None:
        if wanted in columns:
            return wanted
        if wanted in plain:
            return plain[wanted]
        raise PrepareError(f"{path}: unknown column {wanted!r} ({what}); the columns are {sorted(plain)}")
    for candidate in candidates:
        if candidate in plain:
            return plain[candidate]
    if required:
        raise PrepareError(f"{path}: no {what} column among {list(candidates)} (name it with the flag); "
                           f"the columns are {sorted(plain)}")
    return None


def _progress(iterable=None, **kwargs):
    from tqdm import tqdm

    kwargs.setdefault("disable", None)  # off when stderr is not a terminal
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


def _open_binary(path):
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _iter_json_records(path, desc, skip=None):
    """``(line number, dict)`` of each non-blank line. ``skip``: a list whose one entry is None or
    a function of the raw line (bytes) that returns True for lines to pass over unparsed (set
    by the caller once it knows what it wants)."""
    with _open_binary(path) as handle:
        for number, line in enumerate(_progress(handle, desc=desc, unit=" lines", mininterval=1.0), 1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            if skip is not None and skip[0] is not None and skip[0](line):
                continue
            record = _parse_line(line, path, number)
            if not isinstance(record, dict):
                raise PrepareError(f"{path}: line {number} is not a JSON object")
            yield number, record


def _id_filter(key, wanted):
    """A ``skip`` function for :func:`_iter_json_records`: True for lines whose ``key`` field is
    a plain string not in ``wanted`` (found with a regular expression, without parsing)."""
    import re

    pattern = re.compile(rb"""["']""" + re.escape(key.encode("utf-8")) + rb"""["']\s*:\s*["']([^"'\\]*)["']""")

    def skip(line):
        match = pattern.search(line)
        return match is not None and match.group(1).decode("utf-8", errors="replace").strip() not in wanted

    return skip


def _read_delimited(path, what):
    from recbole_mm.features.item_table import DELIMITERS

    with _open_text(path) as handle:
        header = handle.readline()
    if not header.strip():
        raise PrepareError(f"{what} file {path} is empty (no header line)")
    if header.lstrip().startswith("["):
        raise PrepareError(f"{what} file {path} is a JSON array; write one JSON object per line (JSON lines)")
    counts = {delimiter: header.count(delimiter) for delimiter in DELIMITERS}
    delimiter = max(DELIMITERS, key=counts.get) if max(counts.values()) else ","
    try:
        with _open_text(path) as handle:
            frame = pd.read_csv(handle, sep=delimiter, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise PrepareError(f"{what} file {path}: cannot parse it ({' '.join(str(error).split())})") from None
    except pd.errors.EmptyDataError:
        raise PrepareError(f"{what} file {path} is empty") from None
    if frame.empty:
        raise PrepareError(f"{what} file {path} has a header but no rows")
    return frame


def read_interactions(path, user_col=None, item_col=None, rating_col=None, time_col=None):
    """Interactions as a DataFrame with str ``user``, ``item`` and float ``rating``/``timestamp``
    (when present), in file order.

    JSON-lines files (Amazon review dumps included) are parsed line by line (orjson when
    installed), keeping only the four fields; CSV/TSV files with pandas.
    """
    _check_file(path, "interactions")
    if _is_json_lines(path):
        names = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}
        candidates = {"user": USER_COLUMNS, "item": ITEM_COLUMNS, "rating": RATING_COLUMNS,
                      "timestamp": TIME_COLUMNS}
        columns = {key: [] for key in names}
        keys = None
        for number, record in _iter_json_records(path, "reading interactions"):
            if keys is None:  # resolved on the first record
                keys = {key: _pick_column(path, list(record), names[key], candidates[key], key,
                                          key in ("user", "item")) for key in names}
                keys = {key: value for key, value in keys.items() if value is not None}
                columns = {key: [] for key in keys}
                getters = list(keys.items())
            try:
                for key, source in getters:
                    columns[key].append(record[source])
            except KeyError as missing:
                raise PrepareError(f"{path}: line {number} has no {missing.args[0]!r} field") from None
        if keys is None:
            raise PrepareError(f"interactions file {path} is empty")
        frame = pd.DataFrame(columns)
        source_names = keys
    else:
        raw = _read_delimited(path, "interactions")
        columns = list(raw.columns)
        keys = {"user": _pick_column(path, columns, user_col, USER_COLUMNS, "user", True),
                "item": _pick_column(path, columns, item_col, ITEM_COLUMNS, "item", True),
                "rating": _pick_column(path, columns, rating_col, RATING_COLUMNS, "rating", False),
                "timestamp": _pick_column(path, columns, time_col, TIME_COLUMNS, "timestamp", False)}
        frame = pd.DataFrame({key: raw[source] for key, source in keys.items() if source is not None})
        source_names = keys
    frame["user"] = frame["user"].astype(str).str.strip()
    frame["item"] = frame["item"].astype(str).str.strip()
    for key in ("rating", "timestamp"):
        if key in frame:
            values = pd.to_numeric(frame[key], errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy())
            if len(bad):
                raise PrepareError(f"{path}: {len(bad)} rows have a non-numeric {key} "
                                   f"(first at data row {bad[0] + 1}: {frame[key].iloc[bad[0]]!r})")
            frame[key] = values.astype(np.float64)
    empty = np.flatnonzero(((frame["user"] == "") | (frame["item"] == "")).to_numpy())
    if len(empty):
        raise PrepareError(f"{path}: {len(empty)} rows have an empty user or item (first at data row {empty[0] + 1})")
    frame.attrs["source_columns"] = {key: _strip_type(value) for key, value in source_names.items() if value}
    return frame


def _first(value):
    """A list cell's first entry (Amazon's image lists), else the value."""
    if isinstance(value, (list, tuple)):
        return _first(value[0]) if value else ""
    return "" if value is None else value


def _text(value):
    if isinstance(value, (list, tuple)):
        return " ".join(_text(part) for part in value if _text(part))
    return "" if value is None else " ".join(str(value).split())


def _categories(value):
    """A categories cell as text: Amazon's lists kept as their literal (``first_category_path``
    of :mod:`recbole_mm.features.text` reads it), "" when they hold no name."""
    if isinstance(value, (list, tuple)):
        return str(value) if _text(value) else ""
    return _text(value)


def read_item_table(path, wanted_items=None, id_col=None, image_col=None, text_columns=None):
    """The item table as a DataFrame of str: ``item`` and ``title``, ``description``,
    ``categories``, ``brand``, ``image`` (absent fields ""), plus every column named in
    ``text_columns`` (for ``--text-template``). Only rows whose item is in ``wanted_items``
    (a set) are kept when given; the first row of a repeated item wins."""
    _check_file(path, "item table")
    fields = ("title", "description", "brand")
    extra = [column for column in (text_columns or []) if column not in fields + ("categories",)]
    if _is_json_lines(path):
        rows, keys, skip = [], None, [None]
        for number, record in _iter_json_records(path, "reading item table", skip):
            if keys is None:
                keys = list(record)
                item_key = _pick_column(path, keys, id_col, ITEM_ID_COLUMNS, "item id", True)
                if wanted_items is not None:  # the other items' lines are passed over unparsed
                    skip[0] = _id_filter(item_key, wanted_items)
                if image_col is not None:
                    _pick_column(path, keys, image_col, (), "image", True)
                for key in extra:
                    _pick_column(path, keys, key, (), "text template", True)
            item = record.get(item_key)
            if item is None:
                raise PrepareError(f"{path}: line {number} has no {item_key!r} field")
            item = str(item).strip()
            if wanted_items is not None and item not in wanted_items:
                continue
            if image_col is not None:
                image = record.get(image_col)
            else:
                image = next((record[key] for key in IMAGE_COLUMNS if record.get(key)), "")
            categories = next((record[key] for key in CATEGORY_COLUMNS if record.get(key) is not None), "")
            row = {"item": item, "image": str(_first(image)).strip(),
                   "categories": _categories(categories)}
            for key in fields:
                row[key] = _text(record.get(key))
            for key in extra:
                row[key] = _text(record.get(key))
            rows.append(row)
        if keys is None:
            raise PrepareError(f"item table file {path} is empty")
        frame = pd.DataFrame(rows, columns=["item", "title", "description", "categories", "brand", "image"] + extra)
    else:
        raw = _read_delimited(path, "item table")
        columns = list(raw.columns)
        plain = {_strip_type(column): column for column in columns}
        item_key = _pick_column(path, columns, id_col, ITEM_ID_COLUMNS, "item id", True)
        image_key = _pick_column(path, columns, image_col, IMAGE_COLUMNS, "image", False)
        frame = pd.DataFrame({"item": raw[item_key].astype(str).str.strip()})
        for key in fields:
            frame[key] = raw[plain[key]].map(_text) if key in plain else ""
        category_key = next((plain[key] for key in CATEGORY_COLUMNS if key in plain), None)
        frame["categories"] = raw[category_key] if category_key else ""
        frame["image"] = raw[image_key].astype(str).str.strip() if image_key else ""
        for key in extra:
            source = _pick_column(path, columns, key, (), "text template", True)
            frame[key] = raw[source].map(_text)
        if wanted_items is not None:
            frame = frame[frame["item"].isin(wanted_items)]
    frame = frame.drop_duplicates("item", keep="first").reset_index(drop=True)
    return frame


# ============================================================================ filtering
def kcore(users, items, user_k, item_k):
    """Boolean mask of the rows that survive the iterated k-core (users with at least
    ``user_k`` rows and items with at least ``item_k``, recomputed until nothing changes).

    Args:
        users, items: int arrays of dense codes (0..n-1), one per interaction.

    Returns:
        (mask, iterations).
    """
    keep = np.ones(len(users), dtype=bool)
    n_users, n_items = (int(users.max()) + 1, int(items.max()) + 1) if len(users) else (0, 0)
    iterations = 0
    while True:
        iterations += 1
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (user_count[users] >= user_k) & (item_count[items] >= item_k)
        if new_keep.sum() == keep.sum():
            return keep, iterations
        keep = new_keep


def split_labels(users, timestamps, method, seed, ratios=(0.8, 0.1, 0.1)):
    """``x_label`` (0 train, 1 valid, 2 test) of each interaction.

    Args:
        users: int array of dense user ids.
        timestamps: float array or None (then a seeded random order stands in for time).
        method: ``mmrec``, ``random`` or ``loo`` (see the module doc).
    """
    rng = np.random.default_rng(seed)
    n = len(users)
    noise = rng.random(n)
    if method == "random":
        order = rng.permutation(n)
        n_test = int(round(ratios[2] * n))
        n_valid = int(round(ratios[1] * n))
        labels = np.zeros(n, dtype=np.int64)
        labels[order[:n_test]] = 2
        labels[order[n_test:n_test + n_valid]] = 1
        return labels
    time_key = timestamps if timestamps is not None else noise
    order = np.lexsort((noise, time_key, users))  # per user, oldest first (ties at random)
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_from_end = np.empty(n, dtype=np.int64)  # 0 = the user's latest
    rank_from_end[order] = np.repeat(counts, counts) - 1 - (np.arange(n) - np.repeat(starts, counts))
    user_count = counts[users]
    if method == "loo":
        held = np.ones(n, dtype=np.int64)
    else:
        held = np.maximum(1, np.floor(user_count * ratios[2] + 1e-9).astype(np.int64))
        held_valid = np.maximum(1, np.floor(user_count * ratios[1] + 1e-9).astype(np.int64))
    if method == "loo":
        held_valid = held
    labels = np.where(rank_from_end < held, 2, np.where(rank_from_end < held + held_valid, 1, 0))
    labels[user_count < 3] = 0
    return labels


# ============================================================================ images
@dataclass
class DownloadReport:
    ok: int = 0
    cached: int = 0
    failed: dict = field(default_factory=dict)  # reason -> count
    examples: list = field(default_factory=list)


def _is_url(text):
    return text.startswith(("http://", "https://"))


def _cache_name(url):
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def _fetch(url, timeout, retries, max_bytes):
    """The image bytes at ``url``, or raise :class:`DownloadFailed` (the reason)."""
    from PIL import Image

    last = None
    for attempt in range(retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "recbole_mm.prepare"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                kind = response.headers.get("Content-Type", "")
                if not kind.lower().startswith(CONTENT_TYPES_OK):
                    raise DownloadFailed(f"wrong Content-Type ({kind or 'missing'})")
                length = response.headers.get("Content-Length")
                if length and length.strip().isdigit() and int(length) > max_bytes:
                    raise DownloadFailed(f"larger than {max_bytes} bytes")
                data = response.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise DownloadFailed(f"larger than {max_bytes} bytes")
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
            except Exception:  # noqa: BLE001 - PIL raises many kinds
                raise DownloadFailed("not an image (PIL cannot read it)") from None
            return data
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
            if error.code < 500 and error.code != 429:
                break  # a 404 stays a 404
        except DownloadFailed:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
            # timeouts, refused or reset connections, truncated bodies, malformed URLs
            reason = getattr(error, "reason", error)
            last = "timeout" if "timed out" in str(reason) else f"unreachable ({type(reason).__name__})"
        if attempt < retries:
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
    raise DownloadFailed(last)


def download_images(urls, folder, workers=16, timeout=10.0, retries=2, max_bytes=10 * 2 ** 20,
                    retry_failed=False):
    """Fetch each distinct URL into ``folder`` (``<sha1>.img``), concurrently.

    Already cached files are not fetched again; failures are recorded in
    ``folder/failures.json`` and not retried unless ``retry_failed``.

    Returns:
        (dict url -> local path for the images that are there, :class:`DownloadReport`).
    """
    os.makedirs(folder, exist_ok=True)
    failures_path = os.path.join(folder, "failures.json")
    try:
        with open(failures_path, encoding="utf-8") as handle:
            known_failures = json.load(handle)
    except (OSError, ValueError):
        known_failures = {}
    report, paths, todo = DownloadReport(), {}, []
    for url in dict.fromkeys(urls):
        path = os.path.join(folder, _cache_name(url) + ".img")
        if os.path.isfile(path):
            paths[url] = path
            report.cached += 1
        elif url in known_failures and not retry_failed:
            reason = known_failures[url]
            report.failed[reason] = report.failed.get(reason, 0) + 1
        else:
            todo.append((url, path))

    def job(url, path):
        data = _fetch(url, timeout, retries, max_bytes)
        with open(path + f".{os.getpid()}.part", "wb") as handle:
            handle.write(data)
        os.replace(path + f".{os.getpid()}.part", path)
        return path

    if todo:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            futures = {pool.submit(job, url, path): url for url, path in todo}
            for future in _progress(concurrent.futures.as_completed(futures), total=len(futures),
                                    desc="downloading images", unit=" images"):
                url = futures[future]
                try:
                    paths[url] = future.result()
                    report.ok += 1
                    known_failures.pop(url, None)
                except DownloadFailed as error:
                    reason = str(error).split(" (")[0]  # the kind, without the details
                    report.failed[reason] = report.failed.get(reason, 0) + 1
                    known_failures[url] = reason
                    if len(report.examples) < 3:
                        report.examples.append(f"{url}: {error}")
        with open(failures_path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(known_failures, handle)
        os.replace(failures_path + ".tmp", failures_path)
    return paths, report


def local_image_paths(images, root):
    """dict image string -> absolute path for the local (non-URL) entries that are readable
    images, and a DownloadReport-like count of the others."""
    from PIL import Image

    report, paths = DownloadReport(), {}
    for image in dict.fromkeys(images):
        path = os.path.normpath(os.path.join(root, os.path.expanduser(image)))
        if not os.path.isfile(path):
            reason = "file not found"
        else:
            try:
                with Image.open(path) as opened:
                    opened.verify()
                paths[image] = path
                report.cached += 1
                continue
            except Exception:  # noqa: BLE001
                reason = "not an image"
        report.failed[reason] = report.failed.get(reason, 0) + 1
        if len(report.examples) < 3:
            report.examples.append(f"{path}: {reason}")
    return paths, report


# ============================================================================ encoders
def _digest(*parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def _file_stamp(path):
    stat = os.stat(path)
    return [os.path.basename(path), stat.st_size]


def _image_stamp(path):
    """What an image's encoding depends on: its path, size and modification time."""
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _cached_matrix(cache_dir, kind, key, compute):
    """``compute()`` saved as ``<cache_dir>/<kind>_<key>.npy``, or the saved one."""
    path = os.path.join(cache_dir, f"{kind}_{key}.npy")
    if os.path.isfile(path):
        logger.info("%s features: reusing %s", kind, path)
        return np.load(path)
    matrix = np.ascontiguousarray(compute(), dtype=np.float32)
    os.makedirs(cache_dir, exist_ok=True)
    from recbole_mm.files import atomic_write

    atomic_write(path, lambda handle: np.save(handle, matrix))
    return matrix


def encode_texts(encoder, texts, batch_size=64, chunk=1024):
    """``encoder.encode`` in chunks behind a progress bar."""
    parts = []
    for start in _progress(range(0, len(texts), chunk), desc="encoding text", unit=" chunks"):
        parts.append(encoder.encode(texts[start:start + chunk], batch_size=batch_size))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _is_clip(model):
    return hasattr(model, "get_image_features")


def encode_images_generic(model, processor, paths, batch_size=32, device="cpu"):
    """Pooled output (else the mean of the last hidden states) of a transformers vision model,
    L2-normalised, for each image path."""
    import torch
    import torch.nn.functional as F

    from recbole_mm.features.clip import load_images

    model = model.to(device).eval()
    image_processor = getattr(processor, "image_processor", processor)
    out = []
    for start in _progress(range(0, len(paths), batch_size), desc="encoding images", unit=" batches"):
        batch = paths[start:start + batch_size]
        images = load_images([str(k) for k in range(start, start + len(batch))], batch)
        pixels = image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            output = model(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None or pooled.dim() != 2:
            pooled = output.last_hidden_state.mean(dim=1)
        out.append(F.normalize(pooled.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def _clip_features(cache_dir, item_ids, paths, texts, combine, model_name, model, processor, device, batch_size):
    """:func:`recbole_mm.features.clip.extract_clip_features` on a table written for it, in a
    folder of the cache named after its inputs, so that an interrupted run resumes from the
    batches it finished (the tool's own resumable shards)."""
    from recbole_mm.features.clip import FEATURE_FILE, extract_clip_features

    key = _digest("clip-run", model_name, combine, batch_size, item_ids, texts,
                  [_image_stamp(path) for path in paths] if paths is not None else None)
    folder = os.path.join(cache_dir, f"clip-{combine}-{key}")
    os.makedirs(folder, exist_ok=True)
    done = os.path.join(folder, FEATURE_FILE)
    if not os.path.isfile(done):  # else: assembled, but not yet moved into the cache
        table = pd.DataFrame({"item_id": item_ids})
        if paths is not None:
            table["image"] = paths
        if texts is not None:
            table["text"] = texts
        table_path = os.path.join(folder, "items.tsv")
        table.to_csv(table_path, sep="\t", index=False)
        done = extract_clip_features(table_path, folder, model_name_or_path=model_name, combine=combine,
                                     batch_size=batch_size, device=device, model=model, processor=processor,
                                     delimiter="\t")
    matrix = np.load(done)
    shutil.rmtree(folder, ignore_errors=True)
    return matrix


# ============================================================================ result
@dataclass
class PrepareResult:
    folder: str
    name: str
    data_path: str
    stages: list  # (stage, users, items, interactions)
    split_sizes: dict
    features: dict  # file -> shape
    images: dict  # counts
    command: str
    reused: bool = False

    def summary(self):
        lines = [f"Prepared dataset '{self.name}' in {self.folder}" + (" (already up to date)" if self.reused else "")]
        if self.stages:
            lines.append(f"  {'step':<40}{'users':>10}{'items':>10}{'interactions':>14}")
            for stage, users, items, rows in self.stages:
                lines.append(f"  {stage:<40}{users:>10,}{items:>10,}{rows:>14,}")
        if self.split_sizes:
            lines.append("  split (x_label): " + ", ".join(f"{k} {v:,}" for k, v in self.split_sizes.items()))
        for name, shape in self.features.items():
            lines.append(f"  {name:<20} {tuple(shape)}")
        if self.images:
            lines.append("  images: " + ", ".join(f"{k} {v}" for k, v in self.images.items()))
        lines.append("Train on it with:")
        lines.append(f"  {self.command}")
        return "\n".join(lines)


def _label(model, fallback):
    """A model (object or name) as recorded in ``prepare_meta.json``."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return str(model) if model is not None else fallback
    return getattr(model, "name_or_path", None) or getattr(model, "name", None) or type(model).__name__


def _stage(frame):
    return int(frame["user"].nunique()), int(frame["item"].nunique()), len(frame)


# ============================================================================ main function
def prepare_dataset(interactions, items=None, name=None, data_path="dataset", *, user_col=None, item_col=None,
                    rating_col=None, time_col=None, item_id_col=None, image_col=None, image_root=None,
                    min_rating=None, kcore_k=5, user_kcore=None, item_kcore=None, missing_items="error",
                    drop_contentless=False, split="mmrec", ratios=(0.8, 0.1, 0.1), seed=2026,
                    text=True, text_model=None, text_template=None, text_encoder=None,
                    images=True, image_model=DEFAULT_IMAGE_MODEL, image_processor=None, missing_image="mean",
                    clip=False, clip_model=None, clip_processor=None, vlm_model=None, vlm_describer=None,
                    device=None, batch_size=64, download_workers=16, timeout=10.0, retries=2,
                    max_image_bytes=10 * 2 ** 20, retry_failed=False, cache_dir=None, overwrite=False,
                    extra_meta=None):
    """Build ``<data_path>/<name>/`` (see the module doc for every option).

    ``extra_meta``: a dict added to ``prepare_meta.json`` (the bundled builders mark their folders).

    Model objects may replace the names: ``text_encoder`` (anything with
    ``encode(texts, batch_size)``), ``image_model`` (a transformers model: CLIP or any vision
    model; then ``image_processor`` too), ``clip_model``/``clip_processor``, ``vlm_describer``
    (:class:`recbole_mm.features.vlm.Describer`).

    Returns:
        :class:`PrepareResult` (``print(result.summary())``).

    Raises:
        PrepareError: bad input (one line naming the file); nothing is written then.
        ConfigError: a bad option value.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if missing_items not in MISSING_ITEMS:
        raise ConfigError(f"missing_items must be one of {list(MISSING_ITEMS)}, got {missing_items!r}")
    if missing_image not in MISSING_IMAGE:
        raise ConfigError(f"missing_image must be one of {list(MISSING_IMAGE)}, got {missing_image!r}")
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(f"ratios must be three non-negative shares summing to 1, got {list(ratios)}")
    if name is None:
        name = _default_name(interactions)
        if name in _packaged_datasets():  # e.g. 'baby': the packaged yaml would ask for MMRec's 4096-d files
            name += "_prepared"
    if not name or name != os.path.basename(name) or name.startswith("."):
        raise ConfigError(f"name must be a plain folder name (no path, not hidden), got {name!r}")
    data_path = os.path.abspath(data_path)
    folder = os.path.join(data_path, name)
    user_k = int(user_kcore if user_kcore is not None else kcore_k)
    item_k = int(item_kcore if item_kcore is not None else kcore_k)
    cache_dir = os.path.abspath(cache_dir or os.path.join(data_path, ".recbole_mm_prepare_cache"))
    image_root = image_root if image_root is not None else (os.path.dirname(os.path.abspath(items)) if items else ".")
    _check_file(interactions, "interactions")
    if items is not None:
        _check_file(items, "item table")
    text_columns = _template_columns(text_template) if text_template else None
    arguments = {
        "version": META_VERSION, "name": name,
        "inputs": {"interactions": _file_stamp(interactions), "items": _file_stamp(items) if items else None},
        "columns": [user_col, item_col, rating_col, time_col, item_id_col, image_col],
        "min_rating": min_rating, "kcore": [user_k, item_k], "missing_items": missing_items,
        "drop_contentless": drop_contentless, "split": split, "ratios": list(ratios), "seed": seed,
        "text": bool(text) and items is not None, "text_model": _label(text_encoder, text_model),
        "text_template": text_template,
        "images": bool(images) and items is not None, "image_model": _label(image_model, image_model),
        "missing_image": missing_image, "clip": bool(clip), "vlm": _label(vlm_describer, vlm_model),
    }
    existing = _existing_dataset(folder)
    if existing is not None:
        if existing == arguments and not overwrite:
            return _reused_result(folder, name, data_path)
        if not overwrite:
            what = "a dataset prepared from other inputs or options" if existing else "other files"
            raise PrepareError(f"{folder} already holds {what}; pass --overwrite (overwrite=True) to replace it")

    stages = []
    frame = read_interactions(interactions, user_col, item_col, rating_col, time_col)
    token_names = (frame.attrs["source_columns"]["user"], frame.attrs["source_columns"]["item"])
    stages.append(("read", *_stage(frame)))
    if min_rating is not None:
        if "rating" not in frame:
            raise PrepareError(f"{interactions}: --min-rating needs a rating column; name it with --rating-col")
        frame = frame[frame["rating"] >= float(min_rating)]
        stages.append((f"rating >= {min_rating}", *_stage(frame)))
    order_key = frame["timestamp"] if "timestamp" in frame else pd.Series(np.arange(len(frame)), index=frame.index)
    frame = frame.assign(_order=order_key.to_numpy()).sort_values("_order", kind="stable")
    before = len(frame)
    frame = frame.drop_duplicates(["user", "item"], keep="last").drop(columns="_order")
    if len(frame) < before:
        stages.append(("duplicate pairs removed", *_stage(frame)))

    table = None
    if items is not None:
        wanted = set(frame["item"].unique())
        table = read_item_table(items, wanted, item_id_col, image_col, text_columns)
        absent = ~frame["item"].isin(set(table["item"]))
        n_absent = int(frame.loc[absent, "item"].nunique())
        if n_absent:
            if missing_items == "error":
                example = frame.loc[absent, "item"].iloc[0]
                raise PrepareError(
                    f"{interactions}: {n_absent} of {len(wanted)} items (e.g. {example!r}, {int(absent.sum())} "
                    f"interactions) are absent from the item table {items}; pass --missing-items drop or keep")
            if missing_items == "drop":
                frame = frame[~absent]
                stages.append((f"items absent from table dropped ({n_absent})", *_stage(frame)))
        if drop_contentless:
            content = table.set_index("item")
            has = (content["title"] + content["description"] + content["brand"]
                   + content["categories"].astype(str) + content["image"]).str.strip() != ""
            usable = set(has.index[has.to_numpy()])
            frame = frame[frame["item"].isin(usable)]
            stages.append(("items without content dropped", *_stage(frame)))

    frame = _apply_kcore(frame, user_k, item_k, stages, interactions)

    image_paths, image_report = None, None
    if table is not None and images and (table["image"] != "").any():
        image_paths, image_report = _collect_images(table, frame, image_root, cache_dir, download_workers, timeout,
                                                    retries, max_image_bytes, retry_failed)
        if missing_image == "drop":
            have = {item for item, path in image_paths.items() if path}
            before = len(frame)
            frame = frame[frame["item"].isin(have)]
            if len(frame) < before:
                stages.append(("items without image dropped", *_stage(frame)))
                frame = _apply_kcore(frame, user_k, item_k, stages, interactions)

    # ------------------------------------------------------------------ ids and split
    user_ids, user_tokens = pd.factorize(frame["user"], sort=True)  # ids in token order
    item_ids, item_tokens = pd.factorize(frame["item"], sort=True)
    user_tokens, item_tokens = np.asarray(user_tokens, dtype=object), np.asarray(item_tokens, dtype=object)
    timestamps = frame["timestamp"].to_numpy() if "timestamp" in frame else None
    labels = split_labels(user_ids, timestamps, split, seed, ratios)
    inter = pd.DataFrame({MMREC_USER: user_ids, MMREC_ITEM: item_ids, MMREC_LABEL: labels})
    if "rating" in frame:
        inter["rating"] = frame["rating"].to_numpy()
    if timestamps is not None:
        inter["timestamp"] = timestamps.astype(np.int64) if np.all(timestamps == np.round(timestamps)) else timestamps
    inter = inter.sort_values([MMREC_USER, MMREC_LABEL], kind="stable")
    split_sizes = {name_: int((labels == code).sum()) for code, name_ in enumerate(("train", "valid", "test"))}

    # ------------------------------------------------------------------ features
    features, image_counts = {}, {}
    if table is not None:
        content = table.set_index("item").reindex(item_tokens).fillna("")
        content.index.name = "item"
        content = content.reset_index()
        os.makedirs(cache_dir, exist_ok=True)
        if text:
            texts = _item_texts(content, text_template)
            features["text_feat.npy"] = _text_features(texts, text_encoder, text_model, device, batch_size, cache_dir)
        if image_paths is not None:
            item_paths = [image_paths.get(item) for item in item_tokens]
            mask = np.array([path is not None for path in item_paths])
            image_counts = {"with image": int(mask.sum()), "missing": int((~mask).sum())}
            for reason, count in sorted(image_report.failed.items()):
                image_counts[reason] = count
            if mask.any():
                matrix = _image_features([p for p in item_paths if p], image_model, image_processor, device,
                                         batch_size, cache_dir)
                full = np.zeros((len(item_tokens), matrix.shape[1]), dtype=np.float32)
                full[mask] = matrix
                if missing_image == "mean" and (~mask).any():
                    full[~mask] = matrix.mean(axis=0)
                features["image_feat.npy"] = full
                features["image_mask.npy"] = mask
                if clip:
                    texts = _item_texts(content, text_template)
                    features["clip_feat.npy"] = _joint_features(item_tokens, item_paths, mask, texts, clip_model or (
                        image_model if _is_clip_like(image_model) else DEFAULT_IMAGE_MODEL), clip_processor or (
                        image_processor if clip_model is None else None), device, cache_dir)
            else:
                logger.warning("no item has a usable image: image_feat.npy is not written")
        elif clip and text:
            texts = _item_texts(content, text_template)
            features["clip_feat.npy"] = _joint_features(item_tokens, [None] * len(item_tokens),
                                                        np.zeros(len(item_tokens), bool), texts,
                                                        clip_model or DEFAULT_IMAGE_MODEL, clip_processor, device,
                                                        cache_dir)
        if vlm_model or vlm_describer:
            features["image_feat_vlm.npy"] = _vlm_features(content, image_paths, vlm_model, vlm_describer,
                                                          text_encoder, text_model, device, batch_size, cache_dir)

    # ------------------------------------------------------------------ write
    command = _train_command(name, data_path, features)
    _write_folder(folder, name, inter, user_tokens, item_tokens, features, arguments,
                  token_names, overwrite, extra_meta, stages, image_counts)
    shapes = {file: tuple(matrix.shape) for file, matrix in features.items()}
    result = PrepareResult(folder, name, data_path, stages, split_sizes, shapes, image_counts, command)
    with open(os.path.join(folder, "prepare_summary.txt"), "w", encoding="utf-8") as handle:
        handle.write(result.summary() + "\n")
    return result


# ---------------------------------------------------------------------------- helpers
def _default_name(path):
    base = os.path.basename(path)
    for suffix in (".gz", ".json", ".jsonl", ".csv", ".tsv", ".txt", ".inter"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("reviews_", "").replace("_5", "").lower() or "mydata"


def _template_columns(template):
    import string

    try:
        names = [field_name for _, field_name, _, _ in string.Formatter().parse(template) if field_name is not None]
    except ValueError as error:
        raise ConfigError(f"text_template {template!r} is not a format string ({error})") from None
    if not names or any(not name.isidentifier() for name in names):
        raise ConfigError(f"text_template {template!r} must name item-table columns in braces, "
                          "e.g. '{title} ({year}). {genres}'")
    return names


def _item_texts(content, template):
    if template:
        return [template.format(**row).strip() for row in content.to_dict("records")]
    from recbole_mm.features.text import item_texts

    return item_texts(content)


def _apply_kcore(frame, user_k, item_k, stages, source):
    if not len(frame):
        raise PrepareError(f"{source}: no interactions left before the k-core")
    if user_k <= 1 and item_k <= 1:
        return frame
    users = pd.factorize(frame["user"])[0]
    items = pd.factorize(frame["item"])[0]
    keep, iterations = kcore(users, items, user_k, item_k)
    frame = frame[keep]
    stages.append((f"{user_k}/{item_k}-core ({iterations} passes)", *_stage(frame)))
    if not len(frame):
        raise PrepareError(f"{source}: the {user_k}-core on users and {item_k}-core on items leaves no "
                           "interactions; lower --kcore")
    return frame


def _collect_images(table, frame, image_root, cache_dir, workers, timeout, retries, max_bytes, retry_failed):
    """dict item -> local image path (None when missing), and the report."""
    kept = table[table["item"].isin(set(frame["item"]))]
    images = kept.set_index("item")["image"]
    urls = [value for value in images if value and _is_url(value)]
    local = [value for value in images if value and not _is_url(value)]
    report = DownloadReport()
    found = {}
    if urls:
        found, report = download_images(urls, os.path.join(cache_dir, "images"), workers, timeout, retries,
                                        max_bytes, retry_failed)
    if local:
        local_found, local_report = local_image_paths(local, image_root)
        found.update(local_found)
        report.cached += local_report.cached
        for reason, count in local_report.failed.items():
            report.failed[reason] = report.failed.get(reason, 0) + count
        report.examples += local_report.examples
    if report.failed:
        logger.warning("images: %d failed (%s), e.g. %s", sum(report.failed.values()),
                       ", ".join(f"{k}: {v}" for k, v in report.failed.items()), "; ".join(report.examples[:3]))
    no_image = int((images == "").sum())
    if no_image:
        report.failed["no image given"] = no_image
    return {item: found.get(value) if value else None for item, value in images.items()}, report


def _is_clip_like(model):
    return (isinstance(model, str) and "clip" in model.lower()) or (model is not None and _is_clip(model))


def _text_features(texts, encoder, model_name, device, batch_size, cache_dir):
    from recbole_mm.features.text import SentenceEncoder, default_encoder_path

    label = getattr(encoder, "name", None) or (type(encoder).__name__ if encoder is not None else
                                               str(model_name or default_encoder_path()))
    key = _digest("text", label, texts)

    def compute():
        nonlocal encoder
        if encoder is None:
            encoder = SentenceEncoder(model_name, device=device)
        return encode_texts(encoder, texts, batch_size)

    return _cached_matrix(cache_dir, "text", key, compute)


def _load_vision(model, processor):
    if not isinstance(model, str):
        if processor is None:
            raise ConfigError("image_model given as an object needs image_processor too")
        return model, processor
    try:
        from transformers import AutoImageProcessor, AutoModel, CLIPModel

        processor = processor or AutoImageProcessor.from_pretrained(model)
        loaded = AutoModel.from_pretrained(model)
        if loaded.config.model_type == "clip" and not isinstance(loaded, CLIPModel):
            loaded = CLIPModel.from_pretrained(model)
        return loaded, processor
    except (OSError, ValueError) as error:
        raise PrepareError(f"cannot load the image model {model!r} ({' '.join(str(error).split())[:200]}); "
                           "give a local folder with --image-model, or --no-images") from None


def _image_features(paths, model, processor, device, batch_size, cache_dir):
    label = model if isinstance(model, str) else (getattr(model, "name_or_path", "") or type(model).__name__)
    key = _digest("image", label, [_image_stamp(path) for path in paths])

    def compute():
        loaded, image_processor = _load_vision(model, processor)
        device_ = device or _default_device()
        if _is_clip(loaded):
            return _clip_features(cache_dir, [str(k) for k in range(len(paths))], paths, None, "image", label,
                                  loaded, image_processor, device_, batch_size)
        return encode_images_generic(loaded, image_processor, paths, batch_size, device_)

    return _cached_matrix(cache_dir, "image", key, compute)


def _joint_features(item_tokens, item_paths, mask, texts, model, processor, device, cache_dir):
    """CLIP mean of image and text embeddings; text only for items without an image."""
    label = model if isinstance(model, str) else (getattr(model, "name_or_path", "") or type(model).__name__)
    stamps = [_image_stamp(path) if path else None for path in item_paths]
    key = _digest("clip", label, texts, stamps)

    def compute():
        if isinstance(model, str):
            from recbole_mm.features.clip import load_clip

            try:
                loaded, loaded_processor = load_clip(model)
            except (OSError, ValueError) as error:
                raise PrepareError(f"cannot load the CLIP model {model!r} ({' '.join(str(error).split())[:200]}); "
                                   "give a local folder with --clip-model") from None
        else:
            loaded, loaded_processor = model, processor
        device_ = device or _default_device()
        ids = [str(k) for k in range(len(item_tokens))]
        out = None
        for selection, combine in ((mask, "mean"), (~mask, "text")):
            rows = np.flatnonzero(selection)
            if not len(rows):
                continue
            part = _clip_features(cache_dir, [ids[k] for k in rows],
                                  [item_paths[k] for k in rows] if combine == "mean" else None,
                                  [texts[k] for k in rows], combine, label, loaded, loaded_processor, device_, 32)
            if out is None:
                out = np.zeros((len(ids), part.shape[1]), dtype=np.float32)
            out[rows] = part
        return out

    return _cached_matrix(cache_dir, "clip", key, compute)


def _vlm_features(content, image_paths, vlm_model, describer, text_encoder, text_model, device, batch_size,
                  cache_dir):
    """VLIF's enriched visual modality: VLM descriptions (resumable JSONL cache) encoded with the
    sentence encoder as ``title. description``."""
    from recbole_mm.features.text import visual_texts
    from recbole_mm.features.vlm import generate_descriptions

    table = pd.DataFrame({"item_id": content["item"], "title": content["title"],
                          "image": [(image_paths or {}).get(item) or "" for item in content["item"]]})
    folder = tempfile.mkdtemp(prefix="vlm-", dir=cache_dir)
    try:
        table_path = os.path.join(folder, "items.tsv")
        table.to_csv(table_path, sep="\t", index=False)
        described = generate_descriptions(table_path, os.path.join(cache_dir, "vlm_descriptions.jsonl"),
                                          describer=describer, model_name_or_path=vlm_model or None,
                                          device=device, delimiter="\t")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    texts = visual_texts(table, described)
    return _text_features(texts, text_encoder, text_model, device, batch_size, cache_dir)


def _default_device():
    from recbole_mm.features.item_table import default_device

    return default_device()


def _packaged_datasets():
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties", "dataset")
    return {name[:-5] for name in os.listdir(folder) if name.endswith(".yaml")}


def _packaged_overrides(name, features):
    """Command-line overrides for a dataset named like a packaged one whose yaml names other
    modality files or dimensions than those written ("" when none are needed)."""
    if name not in _packaged_datasets():
        return ""
    import yaml

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties", "dataset", f"{name}.yaml"),
              encoding="utf-8") as handle:
        packaged = yaml.safe_load(handle) or {}
    files = {file[: -len("_feat.npy")]: file for file in features if file.endswith("_feat.npy")}
    dims = {modality: int(features[file][1]) for modality, file in files.items()}
    wanted_files, wanted_dims = packaged.get("modality_files"), packaged.get("modality_dims") or {}
    if wanted_files == files and all(dims.get(key) == value for key, value in wanted_dims.items()):
        return ""
    return f' --modality_files="{files}" --modality_dims="{dims}"'


def _train_command(name, data_path, features):
    model = "FREEDOM" if any(f in features for f in ("text_feat.npy", "image_feat.npy")) else "LightGCN"
    relative = os.path.relpath(data_path)
    runnable_here = os.path.isfile("run_recbole_mm.py") and not relative.startswith("..")
    shown = relative if runnable_here else data_path
    shapes = {file: matrix if isinstance(matrix, tuple) else tuple(matrix.shape) for file, matrix in features.items()}
    return (f"python run_recbole_mm.py --model={model} --dataset={name} --data_path={shown}"
            + _packaged_overrides(name, shapes))


def _existing_dataset(folder):
    """None (no folder, or an empty one), the recorded arguments of a prepared folder, or {}
    (a folder with other content)."""
    if not os.path.isdir(folder) or not os.listdir(folder):
        return None
    try:
        with open(os.path.join(folder, META_FILE), encoding="utf-8") as handle:
            return json.load(handle).get("arguments", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _reused_result(folder, name, data_path):
    with open(os.path.join(folder, META_FILE), encoding="utf-8") as handle:
        meta = json.load(handle)
    shapes = {}
    for file in sorted(os.listdir(folder)):
        if file.endswith(".npy"):
            shapes[file] = tuple(np.load(os.path.join(folder, file), mmap_mode="r").shape)
    stages = [tuple(stage) for stage in meta.get("stages", [])]
    return PrepareResult(folder, name, data_path, stages, meta.get("split_sizes", {}), shapes, meta.get("images") or {},
                         _train_command(name, data_path, shapes), reused=True)


def _write_folder(folder, name, inter, user_tokens, item_tokens, features, arguments, token_names, overwrite,
                  extra_meta=None, stages=(), images=None):
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.staging-", dir=parent)
    try:
        os.chmod(staging, 0o777 & ~_umask())
        inter.to_csv(os.path.join(staging, f"{name}.inter"), sep="\t", index=False)
        pd.DataFrame({token_names[0]: user_tokens, MMREC_USER: np.arange(len(user_tokens))}).to_csv(
            os.path.join(staging, "u_id_mapping.csv"), sep="\t", index=False)
        pd.DataFrame({token_names[1]: item_tokens, MMREC_ITEM: np.arange(len(item_tokens))}).to_csv(
            os.path.join(staging, "i_id_mapping.csv"), sep="\t", index=False)
        for file, matrix in features.items():
            np.save(os.path.join(staging, file), matrix)
        meta = {"arguments": arguments,
                "split_sizes": {split: int((inter[MMREC_LABEL] == label).sum())
                                for label, split in enumerate(("train", "valid", "test"))},
                "n_users": len(user_tokens), "n_items": len(item_tokens), "stages": stages, "images": images,
                **(extra_meta or {})}
        with open(os.path.join(staging, META_FILE), "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=1)
        old = None
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.replace(folder, os.path.join(old, name))
        os.replace(staging, folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ============================================================================ command line
def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mm.prepare",
        description="Build a dataset folder in MMRec's layout (<name>.inter with x_label, text_feat.npy, "
                    "image_feat.npy, id maps) from raw interactions and an item table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io_ = parser.add_argument_group("inputs and output")
    io_.add_argument("--interactions", required=True, help="CSV/TSV/JSON lines or Amazon reviews (.gz read directly)")
    io_.add_argument("--items", default=None, help="item table: CSV/TSV/JSON lines or Amazon meta (.gz)")
    io_.add_argument("--name", default=None, help="dataset name (default: from the interactions file name)")
    io_.add_argument("--data-path", default="dataset", help="parent folder of the dataset folder")
    io_.add_argument("--overwrite", action="store_true", help="replace a folder that holds another dataset")
    io_.add_argument("--cache-dir", default=None,
                     help="downloads and encoded features (default <data-path>/.recbole_mm_prepare_cache)")
    cols = parser.add_argument_group("columns (default: the usual names)")
    for flag in ("user-col", "item-col", "rating-col", "time-col", "item-id-col", "image-col"):
        cols.add_argument(f"--{flag}", default=None)
    cols.add_argument("--image-root", default=None, help="folder of relative image paths (default: the table's)")
    flt = parser.add_argument_group("filtering and split")
    flt.add_argument("--min-rating", type=float, default=None)
    flt.add_argument("--kcore", type=int, default=5)
    flt.add_argument("--user-kcore", type=int, default=None)
    flt.add_argument("--item-kcore", type=int, default=None)
    flt.add_argument("--missing-items", choices=MISSING_ITEMS, default="error",
                     help="items of the interactions absent from the item table")
    flt.add_argument("--drop-contentless", action="store_true", help="drop items with neither text nor image")
    flt.add_argument("--split", choices=SPLITS, default="mmrec")
    flt.add_argument("--ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1))
    flt.add_argument("--seed", type=int, default=2026)
    feat = parser.add_argument_group("features")
    feat.add_argument("--no-text", action="store_true")
    feat.add_argument("--text-model", default=None, help="sentence encoder (default all-MiniLM-L6-v2)")
    feat.add_argument("--text-template", default=None, help='e.g. "{title} ({year}). {genres}" (item table columns)')
    feat.add_argument("--no-images", action="store_true")
    feat.add_argument("--image-model", default=DEFAULT_IMAGE_MODEL, help="CLIP or any transformers vision model")
    feat.add_argument("--missing-image", choices=MISSING_IMAGE, default="mean")
    feat.add_argument("--clip", action="store_true", help="also clip_feat.npy (CLIP image+text, NF-VLM)")
    feat.add_argument("--clip-model", default=None)
    feat.add_argument("--vlm-model", default=None, help="also image_feat_vlm.npy (VLIF's VLM descriptions)")
    feat.add_argument("--device", default=None)
    feat.add_argument("--batch-size", type=int, default=64)
    dl = parser.add_argument_group("image download")
    dl.add_argument("--download-workers", type=int, default=16)
    dl.add_argument("--timeout", type=float, default=10.0)
    dl.add_argument("--retries", type=int, default=2)
    dl.add_argument("--max-image-bytes", type=int, default=10 * 2 ** 20)
    dl.add_argument("--retry-failed", action="store_true", help="retry URLs that failed in an earlier run")
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = prepare_dataset(
            args.interactions, args.items, args.name, args.data_path, user_col=args.user_col,
            item_col=args.item_col, rating_col=args.rating_col, time_col=args.time_col,
            item_id_col=args.item_id_col, image_col=args.image_col, image_root=args.image_root,
            min_rating=args.min_rating, kcore_k=args.kcore, user_kcore=args.user_kcore, item_kcore=args.item_kcore,
            missing_items=args.missing_items, drop_contentless=args.drop_contentless, split=args.split,
            ratios=args.ratios, seed=args.seed, text=not args.no_text, text_model=args.text_model,
            text_template=args.text_template, images=not args.no_images, image_model=args.image_model,
            missing_image=args.missing_image, clip=args.clip, clip_model=args.clip_model,
            vlm_model=args.vlm_model, device=args.device, batch_size=args.batch_size,
            download_workers=args.download_workers, timeout=args.timeout, retries=args.retries,
            max_image_bytes=args.max_image_bytes, retry_failed=args.retry_failed, cache_dir=args.cache_dir,
            overwrite=args.overwrite)
    except (DataError, ConfigError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written (rerun to resume downloads and encodings)", file=sys.stderr)
        return 130
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
