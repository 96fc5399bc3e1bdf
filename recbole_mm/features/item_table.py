"""What the offline feature tools (:mod:`~recbole_mm.features.clip`,
:mod:`~recbole_mm.features.vlm`, :mod:`~recbole_mm.features.text`) share: the item table
(CSV/TSV, one row per item), its image paths, the default device and the command-line
plumbing."""
import logging
import os
import sys

import numpy as np
import pandas as pd

from recbole_mm.errors import DataError, MissingFileError

DELIMITERS = ("\t", ",", ";", "|")
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


# ---------------------------------------------------------------------------- item table
def sniff_delimiter(path):
    """The delimiter of a CSV/TSV file: the candidate (tab, comma, semicolon, pipe) that occurs
    most often in its header line; comma when none does."""
    with open(path, encoding="utf-8-sig") as handle:
        header = handle.readline()
    counts = {delimiter: header.count(delimiter) for delimiter in DELIMITERS}
    best = max(DELIMITERS, key=lambda delimiter: counts[delimiter])
    return best if counts[best] else ","


def read_item_table(path, required_columns, delimiter=None):
    """Load the item table as strings and check it.

    Args:
        path: CSV/TSV file with a header line.
        required_columns: (id_column, *other columns that must exist); the first one is the
            item id column.
        delimiter: column separator, or ``None`` to sniff it from the header line.

    Returns:
        pandas.DataFrame with the table's rows in file order (index 0..n-1), every value a
        str (empty cells are ""), item ids stripped of surrounding whitespace.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing columns, no rows, empty or duplicate item ids (naming the file).
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"Item table {path} not found.")
    delimiter = delimiter or sniff_delimiter(path)
    try:
        frame = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"Item table {path}: cannot parse it ({error}).") from error
    missing = [column for column in required_columns if column not in frame.columns]
    if missing:
        raise DataError(
            f"Item table {path} lacks column(s) {missing}; it has {list(frame.columns)} "
            f"(delimiter {delimiter!r})."
        )
    if frame.empty:
        raise DataError(f"Item table {path} has no rows.")
    id_column = required_columns[0]
    ids = frame[id_column].astype(str).str.strip()
    empty = np.flatnonzero((ids == "").to_numpy())
    if len(empty):
        raise DataError(
            f"Item table {path}: {len(empty)} rows have an empty {id_column} "
            f"(first at data row {empty[0] + 1})."
        )
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        raise DataError(
            f"Item table {path}: {len(duplicated)} {id_column} values appear more than once "
            f"(e.g. {duplicated[:5]})."
        )
    frame[id_column] = ids
    return frame.reset_index(drop=True)


def resolve_image_paths(images, image_root):
    """Absolute image paths, relative ones joined to ``image_root``.

    Args:
        images: sequence of n path strings from the table.
        image_root: folder for relative paths.

    Returns:
        list of str, one per item (same order).
    """
    root = os.path.abspath(image_root)
    return [os.path.normpath(os.path.join(root, os.path.expanduser(str(image).strip())))
            for image in images]


def check_images(item_ids, paths, table):
    """Make sure every image exists and PIL can identify it, before any model work.

    Raises:
        FileNotFoundError: some files are missing (message: item ids and paths).
        ValueError: some files are not readable images (message: item ids and paths).
    """
    from PIL import Image, UnidentifiedImageError

    missing, unreadable = [], []
    for item_id, path in zip(item_ids, paths):
        if not os.path.isfile(path):
            missing.append(f"item {item_id!r}: {path}")
            continue
        try:
            with Image.open(path) as image:
                image.size  # header only: cheap
        except (OSError, UnidentifiedImageError, ValueError) as error:
            unreadable.append(f"item {item_id!r}: {path} ({error.__class__.__name__})")
    if missing:
        raise MissingFileError(
            f"Item table {table}: {len(missing)} image file(s) not found: "
            + "; ".join(missing[:5]) + ("; ..." if len(missing) > 5 else "")
        )
    if unreadable:
        raise DataError(
            f"Item table {table}: {len(unreadable)} image file(s) cannot be read as images: "
            + "; ".join(unreadable[:5]) + ("; ..." if len(unreadable) > 5 else "")
        )


# ---------------------------------------------------------------------------- device
def default_device():
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------- command line
def add_common_arguments(parser, items_help):
    """The arguments every feature tool takes: ``--items`` (the table), ``--device`` and
    ``--delimiter``."""
    parser.add_argument("--items", required=True, help=items_help)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--delimiter", default=None, help="column separator (default: sniffed)")
    return parser


def run_command(function, *args, **kwargs):
    """Run a feature tool as a command: INFO messages on stderr, an input error (missing or
    malformed file, an output that exists) printed as ``error: ...``.

    Returns:
        (exit code, result): (0, what ``function`` returned) or (2, None) on an input error.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return 0, function(*args, **kwargs)
    except INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2, None
