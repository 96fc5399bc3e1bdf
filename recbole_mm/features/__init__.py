"""Item-feature extraction: turn raw item content (images, text) into modality files.

``extract_clip_features`` (in :mod:`recbole_mm.features.clip`) writes ``clip_feat.npy`` and
``clip_items.txt`` for a dataset folder; ``python -m recbole_mm.features.clip --help`` is the
command line. The import is lazy so that ``python -m recbole_mm.features.clip`` does not load
the module twice and ``import recbole_mm.features`` does not import transformers.
"""

__all__ = ["extract_clip_features"]


def __getattr__(name):
    if name == "extract_clip_features":
        from recbole_mm.features.clip import extract_clip_features

        return extract_clip_features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
