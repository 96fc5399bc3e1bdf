"""Loading item-feature matrices and aligning their rows with RecBole's internal item ids.

A modality is one ``.npy`` matrix (rows = items, columns = feature dimensions). Its rows are
keyed by the original item token, either

- by an id-map file (``feature_id_map`` in the dataset yaml): a text file with one item token
  per line, line k naming the item of row k (shared by every modality of the dataset), or
- positionally, as in MMRec folders: row i belongs to the item whose token is the integer i.

RecBole remaps tokens to internal ids (0 = padding); :func:`align_rows` re-orders the rows so
that row ``id`` of the returned matrix is the feature of internal item ``id`` and row 0 is zeros.
"""
import mmap
import os

import numpy as np

from recbole_mm.errors import DataError


class FeatureFileError(DataError):
    """A modality file is missing or does not fit the dataset; the message names the file."""


def read_id_map(path):
    """Item tokens of the feature rows, one per line of ``path`` (row order).

    Returns:
        list of str, one token per feature row.
    """
    if not os.path.isfile(path):
        raise FeatureFileError(f"Feature id map {path} not found.")
    with open(path, encoding="utf-8") as handle:
        tokens = [line.strip() for line in handle if line.strip()]
    if len(tokens) != len(set(tokens)):
        unique, first, counts = np.unique(np.asarray(tokens, dtype=str), return_index=True, return_counts=True)
        repeated = unique[counts > 1][np.argsort(first[counts > 1])]
        raise FeatureFileError(
            f"Feature id map {path} (feature_id_map): item token {repeated[0]!s} is listed "
            f"{counts[unique == repeated[0]][0]} times ({len(repeated)} tokens repeated: "
            f"{repeated[:5].tolist()}); each line names the item of one feature row, so a token can appear once.")
    return tokens


def load_matrix(path, modality, expected_dim=None):
    """Open a modality matrix (memory-mapped) and check its shape and values.

    Raises:
        FeatureFileError: missing file, unreadable file, not 2-D, non-numeric, a dimension other
            than ``expected_dim``, or NaN/Inf values.
    """
    if not os.path.isfile(path):
        raise FeatureFileError(f"Modality '{modality}': feature file {path} not found.")
    problem = npy_problem(path)
    if problem:
        raise FeatureFileError(f"Modality '{modality}': {path} {problem}.")
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # what npy_problem has not foreseen
        raise FeatureFileError(f"Modality '{modality}': cannot read {path} as .npy "
                               f"({type(error).__name__}: {' '.join(str(error).split())}).") from None
    if matrix.ndim != 2:
        raise FeatureFileError(
            f"Modality '{modality}': {path} has shape {matrix.shape}; "
            "expected a 2-D array (items x dimensions)."
        )
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise FeatureFileError(
            f"Modality '{modality}': {path} holds {matrix.dtype} values; expected real numbers."
        )
    if expected_dim is not None and matrix.shape[1] != int(expected_dim):
        raise FeatureFileError(
            f"Modality '{modality}': {path} has {matrix.shape[1]} dimensions but the dataset "
            f"config says {expected_dim}."
        )
    _check_finite(matrix, path, modality)
    return matrix


def npy_problem(path):
    """What keeps ``path`` from being a readable numeric ``.npy`` array, in a few words, or
    ``None``. Reads only the header, so it is cheap on a large file.

    Caught: an empty file, a file that is not ``.npy`` (an ``.npz`` archive, a pickle, random
    bytes), a damaged header, an array of Python objects, and data shorter than the header's
    shape and dtype say (a truncated copy).
    """
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as handle:
        prefix = handle.read(len(np.lib.format.MAGIC_PREFIX))
        if prefix != np.lib.format.MAGIC_PREFIX:
            if prefix.startswith(b"PK"):
                return "is an .npz archive (np.savez), not an .npy array: save one matrix with np.save"
            return (f"is not an .npy file (it does not start with the NumPy header; first bytes "
                    f"{prefix[:6]!r}): write it with np.save")
        handle.seek(0)
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # 2.0 and 3.0 share the layout
            shape, _, dtype = read_header(handle)
        except (ValueError, OSError, EOFError) as error:
            return f"has a damaged .npy header ({' '.join(str(error).split())})"
        data_offset = handle.tell()
    if dtype.hasobject:
        return f"holds Python objects (dtype {dtype}); expected a matrix of real numbers"
    expected = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        return (f"is truncated: its header says shape {tuple(shape)} of {dtype} ({expected} bytes with the "
                f"header) but the file has {size} bytes")
    return None


def release_pages(matrix):
    """Drop a memory-mapped matrix's pages from this process's resident set.

    The pages of a mapped file that the process has read count in its RSS (and in its peak)
    for as long as they stay mapped, on top of the float32 copy the dataset keeps: a 1.6 GB
    image table would count twice. ``MADV_DONTNEED`` unmaps them from the process only: they
    stay in the page cache, and a later read of the same rows faults them back in from the
    file (the mapping is read-only and shared, so nothing is lost). A no-op for an in-memory
    array or where ``madvise`` is not available.
    """
    mapping = getattr(matrix, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _check_finite(matrix, path, modality, chunk_rows=8192):
    """Scan in row chunks so a memory-mapped file is never copied whole, nor kept resident."""
    if not np.issubdtype(matrix.dtype, np.floating):
        return
    for start in range(0, matrix.shape[0], chunk_rows):
        block = np.asarray(matrix[start:start + chunk_rows])
        bad = ~np.isfinite(block)
        release_pages(matrix)
        if bad.any():
            rows = np.nonzero(bad.any(axis=1))[0] + start
            total = int(np.count_nonzero(~np.isfinite(np.asarray(matrix))))
            raise FeatureFileError(
                f"Modality '{modality}': {path} contains {total} NaN/Inf values "
                f"(first in row {rows[0]})."
            )


def rows_for_tokens(item_tokens, n_rows, id_map=None, source="feature file", id_map_source="the id map"):
    """Feature-row index of each item token.

    Args:
        item_tokens: sequence of str, the dataset's item tokens in internal-id order,
            without the padding token.
        n_rows: number of rows in the feature matrices.
        id_map: list of str (row k -> token) or ``None`` for positional rows (token i -> row i).
        source: file name used in error messages.
        id_map_source: the id map's file name, for the same.

    Returns:
        np.ndarray of int64, shape (len(item_tokens),).
    """
    tokens = np.asarray(item_tokens, dtype=str)
    if id_map is not None:
        if len(id_map) != n_rows:
            raise FeatureFileError(
                f"{source}: the id map lists {len(id_map)} items but the feature file has "
                f"{n_rows} rows (id map: {id_map_source}, one line per feature row)."
            )
        position = {token: row for row, token in enumerate(id_map)}
        rows = np.fromiter((position.get(token, -1) for token in tokens), np.int64, len(tokens))
    else:
        rows = np.full(len(tokens), -1, dtype=np.int64)
        numeric = np.char.isdigit(tokens)
        rows[numeric] = tokens[numeric].astype(np.int64)
        rows[rows >= n_rows] = -1
    missing = tokens[rows < 0]
    if len(missing):
        if id_map is not None:
            raise FeatureFileError(
                f"{id_map_source}: {len(missing)} items of the interactions are not listed in this id map "
                f"(e.g. item tokens {missing[:5].tolist()}), so they have no row in {source}."
            )
        hint = ""
        if not np.char.isdigit(missing).all():
            hint = (" The item tokens are not row numbers: list the item token of each feature row, one per "
                    "line, in a file named by feature_id_map in the dataset config.")
        raise FeatureFileError(
            f"{source}: {len(missing)} items of the interactions have no feature row in positional rows "
            f"0..{n_rows - 1} (e.g. item tokens {missing[:5].tolist()}).{hint}"
        )
    return rows


def align_rows(matrix, rows, budget_bytes=2 ** 27):
    """Gather ``rows`` of ``matrix`` behind a zero padding row.

    A memory-mapped ``matrix`` is read in file order, ``budget_bytes`` at a time (128 MB), each
    block's rows scattered to their items and its pages released (:func:`release_pages`): the
    peak memory is the returned copy plus one block, not the copy plus the whole mapped file
    plus a gathered temporary.

    Returns:
        np.ndarray float32, shape (len(rows) + 1, d): row 0 is padding, row id is item id.
    """
    rows = np.asarray(rows, dtype=np.int64)
    aligned = np.zeros((len(rows) + 1, matrix.shape[1]), dtype=np.float32)
    order = np.argsort(rows, kind="stable")  # the items by their feature row
    sorted_rows = rows[order]
    block_rows = max(1, budget_bytes // max(1, matrix.shape[1] * matrix.dtype.itemsize))
    for start in range(0, matrix.shape[0], block_rows):
        first, last = np.searchsorted(sorted_rows, [start, start + block_rows])
        if first < last:
            block = np.asarray(matrix[start:start + block_rows])
            aligned[1 + order[first:last]] = block[sorted_rows[first:last] - start]
            del block
            release_pages(matrix)
    return aligned
