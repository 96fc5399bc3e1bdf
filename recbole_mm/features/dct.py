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

from recbole_mm.errors import ConfigError

_TRANSFORMS = {
    "1d": (lambda a: fft.dct(a, type=2, norm="ortho", axis=1), lambda a: fft.idct(a, type=2, norm="ortho", axis=1)),
    "2d": (lambda a: fft.dctn(a, type=2, norm="ortho", axes=(0, 1)),
           lambda a: fft.idctn(a, type=2, norm="ortho", axes=(0, 1))),
    "none": (lambda a: a, lambda a: a),
}
DCT_MODES = tuple(_TRANSFORMS)


def _transform(matrix, mode, inverse):
    if mode not in _TRANSFORMS:
        raise ConfigError(f"dct_mode must be one of {DCT_MODES}, got {mode!r}")
    return _TRANSFORMS[mode][int(inverse)](np.asarray(matrix, dtype=np.float64)).astype(np.float32)


def dct_features(matrix, mode="1d"):
    """DCT of an (n_items x d) matrix; float32 array of the same shape."""
    return _transform(matrix, mode, inverse=False)


def inverse_dct_features(matrix, mode="1d"):
    """Inverse of :func:`dct_features`."""
    return _transform(matrix, mode, inverse=True)
