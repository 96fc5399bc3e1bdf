"""Discrete cosine transforms of item-feature matrices (LIRDRec's multimodal transformation).

``mode``:

- ``"1d"``: type-II orthonormal DCT along the feature axis of each item (each row
  separately): ``scipy.fft.dct(x, type=2, norm="ortho", axis=1)``. This is what LIRDRec's
  public code applies (``torch_dct.dct`` on the last dimension) and what produced the paper's
  numbers.
- ``"2d"``: type-II orthonormal DCT over both axes (items x features), as the paper's text
  describes (``scipy.fft.dctn(..., axes=(0, 1))``): every output entry mixes all items, so the
  result depends on the catalogue and on the item order.
- ``"none"``: no transform (the matrix is returned as float32).

All three are orthonormal (``idct`` / ``idctn`` with ``norm="ortho"`` invert them exactly).
"""
import numpy as np
from scipy import fft

DCT_MODES = ("1d", "2d", "none")


def dct_features(matrix, mode="1d"):
    """DCT of an (n_items x d) matrix; float32 array of the same shape."""
    array = np.asarray(matrix, dtype=np.float64)
    if mode == "1d":
        out = fft.dct(array, type=2, norm="ortho", axis=1)
    elif mode == "2d":
        out = fft.dctn(array, type=2, norm="ortho", axes=(0, 1))
    elif mode == "none":
        out = array
    else:
        raise ValueError(f"dct_mode must be one of {DCT_MODES}, got {mode!r}")
    return out.astype(np.float32)


def inverse_dct_features(matrix, mode="1d"):
    """Inverse of :func:`dct_features`."""
    array = np.asarray(matrix, dtype=np.float64)
    if mode == "1d":
        out = fft.idct(array, type=2, norm="ortho", axis=1)
    elif mode == "2d":
        out = fft.idctn(array, type=2, norm="ortho", axes=(0, 1))
    elif mode == "none":
        out = array
    else:
        raise ValueError(f"dct_mode must be one of {DCT_MODES}, got {mode!r}")
    return out.astype(np.float32)
