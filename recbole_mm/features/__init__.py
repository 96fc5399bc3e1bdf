"""Item-feature extraction: turn raw item content (images, text) into modality files.

- ``extract_clip_features`` (:mod:`recbole_mm.features.clip`) writes ``clip_feat.npy`` and
  ``clip_items.txt`` for a dataset folder.
- ``build_prompt`` and ``generate_descriptions`` (:mod:`recbole_mm.features.vlm`) describe each
  item's image with a vision-language model (VLIF's title-guided prompt) into a resumable JSONL
  cache.
- ``encode_item_features`` (:mod:`recbole_mm.features.text`) encodes those descriptions and the
  item text with a sentence encoder into ``image_feat_vlm.npy``, ``text_feat.npy`` and
  ``vlm_items.txt``.

The three share :mod:`recbole_mm.features.item_table` (reading and checking the item table,
image paths, the default device, the command-line plumbing).

Each module is also a command line (``python -m recbole_mm.features.<module> --help``). The
imports are lazy so that ``python -m`` does not load a module twice and
``import recbole_mm.features`` does not import transformers.
"""

__all__ = ["extract_clip_features", "build_prompt", "generate_descriptions", "encode_item_features"]

_SOURCES = {
    "extract_clip_features": "recbole_mm.features.clip",
    "build_prompt": "recbole_mm.features.vlm",
    "generate_descriptions": "recbole_mm.features.vlm",
    "encode_item_features": "recbole_mm.features.text",
}


def __getattr__(name):
    if name in _SOURCES:
        import importlib

        return getattr(importlib.import_module(_SOURCES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
