"""MMRec's folder format: one tab-separated ``<dataset>.inter`` with an untyped header
``userID itemID x_label`` (plus optional ``rating``/``timestamp``), where ``x_label`` 0/1/2
marks the train/valid/test split, next to ``<modality>_feat.npy`` feature files whose row ``i``
belongs to item ``i``. Read by :class:`~recbole_mm.data.dataset.MultiModalDataset`, written by
the ``synthetic`` generator and by :mod:`recbole_mm.prepare`. It sits below the data package
(which still re-exports it as ``recbole_mm.data.mmrec_format``): the dataset builds a bundled
dataset with :mod:`recbole_mm.prepare`, so what prepare imports must not import the dataset."""
import os

import numpy as np
import pandas as pd

from recbole_mm.errors import DataError

MMREC_LABEL = "x_label"
MMREC_USER = "userID"
MMREC_ITEM = "itemID"
FEATURE_SUFFIX = "_feat.npy"
LAYOUT_HINT = (
    "expected a tab-separated header line, MMRec's userID<TAB>itemID<TAB>x_label or RecBole's "
    "typed columns such as user_id:token<TAB>item_id:token"
)


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def inter_layout(path):
    """``"mmrec"`` or ``"atomic"`` (RecBole's typed columns): the layout of the interaction file
    at ``path``, read from its header line.

    Raises:
        DataError: one line naming the file and the layout expected, when the file is empty,
            not tab-separated, has no header (its first line is data), mixes typed and untyped
            columns, lacks one of ``userID``/``itemID``/``x_label`` without being typed, or has
            a header but no rows. RecBole itself would fail later with "not enough values to
            unpack".
    """
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n")
        has_rows = any(line.strip() for line in iter(handle.readline, ""))
    if not header.strip():
        raise DataError(f"{path} is empty or starts with a blank line; {LAYOUT_HINT}")
    columns = header.split("\t")
    if len(columns) == 1:
        separator = next((sep for sep in (",", ";", "|", " ") if sep in header.strip()), None)
        found = f"separated by {separator!r}" if separator else "a single column"
        raise DataError(f"{path}: the header {header!r} is {found}, not tab-separated; {LAYOUT_HINT}")
    untyped = [column for column in columns if ":" not in column]
    if not untyped:
        layout = "atomic"
    elif len(untyped) < len(columns):
        raise DataError(f"{path}: header columns {untyped} have no RecBole type (name:type) but others do; "
                        f"{LAYOUT_HINT}")
    elif all(_is_number(column) for column in columns):
        raise DataError(f"{path}: the first line {header!r} is data, not a header; {LAYOUT_HINT}")
    else:
        missing = [column for column in (MMREC_USER, MMREC_ITEM, MMREC_LABEL) if column not in columns]
        if missing:
            raise DataError(f"{path}: the header {header!r} lacks the MMRec column(s) {missing} and its columns "
                            f"have no RecBole type (name:type); {LAYOUT_HINT}")
        layout = "mmrec"
    if not has_rows:
        raise DataError(f"{path} has a header but no interaction rows")
    return layout


def feature_files(folder):
    """``{modality: file name}`` of the ``<modality>_feat.npy`` files in ``folder`` (MMRec's
    naming: the modality is the file stem without ``_feat``), in MMRec's order: text, image,
    then the others by name."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(FEATURE_SUFFIX) and
                   os.path.isfile(os.path.join(folder, name)))
    files = {name[: -len(FEATURE_SUFFIX)]: name for name in names if len(name) > len(FEATURE_SUFFIX)}
    order = {"text": 0, "image": 1}
    return {modality: files[modality] for modality in sorted(files, key=lambda m: (order.get(m, 2), m))}


def read_mmrec_inter(path):
    """Load and check an MMRec ``.inter`` file.

    Returns:
        pandas.DataFrame with integer ``userID``, ``itemID`` and ``x_label`` columns (plus
        ``rating``/``timestamp`` when present).
    """
    frame = pd.read_csv(path, sep="\t")
    missing = [column for column in (MMREC_USER, MMREC_ITEM, MMREC_LABEL) if column not in frame]
    if missing:
        raise DataError(f"{path}: MMRec interaction file lacks columns {missing}.")
    keep = [c for c in (MMREC_USER, MMREC_ITEM, MMREC_LABEL, "rating", "timestamp") if c in frame]
    frame = frame[keep]
    for column in (MMREC_USER, MMREC_ITEM, MMREC_LABEL):
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise DataError(f"{path}: column {column} must hold integers, found {frame[column].dtype}.")
    labels = set(np.unique(frame[MMREC_LABEL]).tolist())
    if not labels <= {0, 1, 2}:
        raise DataError(
            f"{path}: x_label must be 0 (train), 1 (valid) or 2 (test); found {sorted(labels - {0, 1, 2})}."
        )
    if 0 not in labels:
        raise DataError(f"{path}: no training rows (x_label 0).")
    return frame


def write_mmrec_inter(path, users, items, labels):
    """Write an MMRec-layout interaction file (``userID itemID x_label``, tab-separated)."""
    frame = pd.DataFrame({MMREC_USER: users, MMREC_ITEM: items, MMREC_LABEL: labels})
    frame.to_csv(path, sep="\t", index=False)

