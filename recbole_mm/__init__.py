"""recbole_mm: multimodal recommendation as a RecBole plugin."""
from recbole_mm.compat import apply_patches

apply_patches()

__version__ = "0.1.0"
