"""MMRec's folder format: one tab-separated ``<dataset>.inter`` with an untyped header
``userID itemID x_label`` (plus optional ``rating``/``timestamp``), where ``x_label`` 0/1/2
marks the train/valid/test split, next to ``<modality>_feat.npy`` feature files whose row ``i``
belongs to item ``i``. Read by :class:`~recbole_mm.data.dataset.MultiModalDataset`, written by
the ``synthetic`` generator."""
import os

import numpy as np
import pandas as pd

MMREC_LABEL = "x_label"
MMREC_USER = "userID"
MMREC_ITEM = "itemID"


def is_mmrec_layout(path):
    """True when ``path`` is an MMRec interaction file (untyped header with ``x_label``)."""
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    return MMREC_LABEL in header and not any(":" in column for column in header)


def read_mmrec_inter(path):
    """Load and check an MMRec ``.inter`` file.

    Returns:
        pandas.DataFrame with integer ``userID``, ``itemID`` and ``x_label`` columns (plus
        ``rating``/``timestamp`` when present).
    """
    frame = pd.read_csv(path, sep="\t")
    missing = [column for column in (MMREC_USER, MMREC_ITEM, MMREC_LABEL) if column not in frame]
    if missing:
        raise ValueError(f"{path}: MMRec interaction file lacks columns {missing}.")
    keep = [c for c in (MMREC_USER, MMREC_ITEM, MMREC_LABEL, "rating", "timestamp") if c in frame]
    frame = frame[keep]
    for column in (MMREC_USER, MMREC_ITEM, MMREC_LABEL):
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise ValueError(f"{path}: column {column} must hold integers, found {frame[column].dtype}.")
    labels = set(np.unique(frame[MMREC_LABEL]).tolist())
    if not labels <= {0, 1, 2}:
        raise ValueError(
            f"{path}: x_label must be 0 (train), 1 (valid) or 2 (test); found {sorted(labels - {0, 1, 2})}."
        )
    if 0 not in labels:
        raise ValueError(f"{path}: no training rows (x_label 0).")
    return frame


def write_mmrec_inter(path, users, items, labels):
    """Write an MMRec-layout interaction file (``userID itemID x_label``, tab-separated)."""
    frame = pd.DataFrame({MMREC_USER: users, MMREC_ITEM: items, MMREC_LABEL: labels})
    frame.to_csv(path, sep="\t", index=False)

