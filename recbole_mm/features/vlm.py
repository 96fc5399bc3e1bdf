"""VLM item descriptions: an item table (id, title, image) -> one generated description per item.

This is the first half of VLIF's visual enrichment (paper §2.2, Eq. 5): a vision-language
model looks at each product image, guided by the product title, and writes a short
description of what matters for recommendation. :mod:`recbole_mm.features.text` encodes the
descriptions into the enriched visual modality (``Enc(VLM(P(v_i, t_i)))``).

Input: a CSV/TSV table with one row per item and the columns ``item_id``, ``image`` (a path;
relative paths are resolved against ``image_root``, by default the table's folder) and
``title`` (needed by the ``title`` template only); other columns (brand, categories,
description) are ignored here.

Prompts (:func:`build_prompt`): ``title`` (the default) tells the model that it works for a
recommender system, gives it the product title, asks it to reason first about what the product
is (a general description) and then to return only a 2-3 sentence description of the features
that matter to a buyer and to a recommendation model. ``plain`` is the same prompt without the
title (the paper's "VLM w.o title" ablation). Under ``title``, items whose title is empty get
the ``plain`` prompt (a warning gives their number).

Output: a JSONL cache file, one JSON object per line, appended to as generation goes::

    {"item_id": "i1", "description": "...", "template": "title", "model": "Qwen/..."}
    {"item_id": "i2", "error": "FileNotFoundError: ...", "template": "title", "model": "Qwen/..."}

Resuming: the file is flushed (and synced) after every batch. A run skips the items that
already have a *description* line with the same template, so a stopped run goes on where it
stopped; a truncated last line (a crash in the middle of a write) is dropped. Error lines
(missing or unreadable image, a generation failure, an empty answer) are not fatal and do not
count as done: the next run retries those items. When a whole batch fails, its items are
retried one by one so that one bad item does not take the others down.
:func:`load_descriptions` reads the cache back (the latest description per item).

Generation (:class:`TransformersDescriber`): a transformers image-text-to-text model, by hub id
or local folder (default ``Qwen/Qwen2.5-VL-3B-Instruct``), loaded with ``AutoProcessor`` and
``AutoModelForImageTextToText``; each item is one user turn of the chat template holding one
image and the prompt; batches are left-padded, decoding is greedy (``do_sample=False``) with
``max_new_tokens`` (128) and only the new tokens are decoded. The real default model needs its
weights (downloaded from the hub, or a local copy) and, for Qwen's processors in transformers
5.x, ``torchvision``; the tests run the same code on a tiny random LLaVA built offline.
Anything with ``describe(images, prompts) -> list[str]`` (:class:`Describer`) can replace it.

Command line::

    python -m recbole_mm.features.vlm --items items.csv \\
        --cache dataset/mydata/vlm_descriptions.jsonl --model Qwen/Qwen2.5-VL-3B-Instruct \\
        --template title --batch-size 8 --device cuda --max-new-tokens 128
"""
import argparse
import json
import logging
import os
import sys
from typing import List, Protocol

import numpy as np

from recbole_mm.errors import ConfigError, DataError, MissingFileError
from recbole_mm.features.item_table import (
    add_common_arguments,
    default_device,
    read_item_table,
    resolve_image_paths,
    run_command,
)

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_MAX_NEW_TOKENS = 128
TEMPLATES = ("title", "plain")

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- prompts
PROMPT_ROLE = (
    "You are the product analyst of an e-commerce recommender system. Your descriptions "
    "are turned into features that a recommendation model uses to match products with "
    "the shoppers who will like them."
)
PROMPT_TITLE = 'The image shows the product sold under the title "{title}".'
PROMPT_NO_TITLE = "The image shows a product sold in the shop."
PROMPT_STEPS = (
    "Work step by step. First, reason about the product: identify it{with_title}, and form "
    "a general description of what it is, who it is for and how it is used. Then, from that "
    "reasoning, write a description of 2-3 sentences of the features that matter most to a "
    "buyer and to a recommendation model: the type of product, its material, colour, "
    "pattern, shape, style, size, notable parts and intended use, as far as the image shows "
    "them.\n"
    "Return ONLY the final 2-3 sentence description: no reasoning, no headings, no lists."
)


def build_prompt(title=None, template="title"):
    """The instruction given to the VLM together with one product image.

    Args:
        title: the product title (used by ``template="title"`` only).
        template: ``"title"`` (title-guided chain-of-thought prompt, the paper's) or
            ``"plain"`` (the same prompt without the title, the ablation).

    Returns:
        str, the prompt text.

    Raises:
        ValueError: unknown ``template``, or ``"title"`` with an empty title.
    """
    if template not in TEMPLATES:
        raise ConfigError(f"template must be one of {TEMPLATES}, got {template!r}.")
    if template == "plain":
        return "\n".join([PROMPT_ROLE, PROMPT_NO_TITLE, PROMPT_STEPS.format(with_title="")])
    title = " ".join(str(title or "").split())
    if not title:
        raise ConfigError("template 'title' needs a non-empty product title.")
    return "\n".join([PROMPT_ROLE, PROMPT_TITLE.format(title=title),
                      PROMPT_STEPS.format(with_title=" with the help of its title")])


def item_prompts(titles, template):
    """One prompt per item; under ``"title"``, items with an empty title get the plain one.

    Returns:
        (list of str prompts, int number of items that got the plain prompt instead).
    """
    plain = build_prompt(template="plain")
    if template == "plain":
        return [plain] * len(titles), 0
    prompts = [build_prompt(title, "title") if str(title).strip() else plain for title in titles]
    return prompts, sum(not str(title).strip() for title in titles)


# ---------------------------------------------------------------------------- describers
class Describer(Protocol):
    """What :func:`generate_descriptions` needs from a model: a name and a batched call."""

    name: str

    def describe(self, images, prompts) -> List[str]:
        """One description per (PIL image, prompt) pair, in order."""


class TransformersDescriber:
    """A transformers image-text-to-text model (Qwen2.5-VL, LLaVA, Gemma 3, ...) as a
    :class:`Describer`.

    Args:
        model_name_or_path: hub id or local folder of the model and its processor.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.
        max_new_tokens: generation length limit.
        dtype: weights dtype passed to ``from_pretrained`` (e.g. ``"bfloat16"``); default the
            library's.
        model, processor: already built objects (else loaded from ``model_name_or_path``).
    """

    def __init__(self, model_name_or_path=DEFAULT_MODEL, device=None,
                 max_new_tokens=DEFAULT_MAX_NEW_TOKENS, dtype=None, model=None, processor=None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if int(max_new_tokens) < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
        self.name = str(model_name_or_path)
        self.device = device or default_device()
        self.max_new_tokens = int(max_new_tokens)
        if processor is None:
            processor = AutoProcessor.from_pretrained(model_name_or_path)
        if model is None:
            options = {"dtype": dtype} if dtype is not None else {}
            model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, **options)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only batches: the new tokens align at the end
        self.processor = processor
        self.model = model.to(self.device).eval()

    def chat_texts(self, prompts):
        """The chat-template rendering of one user turn (an image, then the prompt) per prompt,
        ending with the assistant's generation prompt."""
        conversations = [[{"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": prompt}]}]
                         for prompt in prompts]
        return [self.processor.apply_chat_template(conversation, tokenize=False,
                                                   add_generation_prompt=True)
                for conversation in conversations]

    def describe(self, images, prompts):
        """Greedy generation for one batch.

        Args:
            images: list of b RGB ``PIL.Image``.
            prompts: list of b prompt strings.

        Returns:
            list of b str, the decoded new tokens of each item, stripped.
        """
        import torch

        inputs = self.processor(text=self.chat_texts(prompts), images=list(images),
                                padding=True, return_tensors="pt")
        inputs = inputs.to(self.device).to(self.model.dtype)  # the second call casts floats only
        with torch.inference_mode():
            generated = self.model.generate(**inputs, do_sample=False,
                                            max_new_tokens=self.max_new_tokens)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in
                self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


# ---------------------------------------------------------------------------- cache
def parse_cache_line(line, path, number):
    """One cache record (a dict with ``item_id``), or raise ``ValueError`` naming the line."""
    record = json.loads(line)
    if not isinstance(record, dict) or "item_id" not in record:
        raise DataError(f"Description cache {path}, line {number}: not an object with item_id.")
    if not isinstance(record.get("description", ""), str):
        raise DataError(f"Description cache {path}, line {number}: description is not a string.")
    return record


def scan_cache(path):
    """Read every record of a cache file.

    A last line that starts like a record (``{``) but does not parse is the trace of a write
    cut short by a crash: it is skipped and its byte offset returned.

    Returns:
        (list of record dicts in file order, offset of the broken last line or ``None``).

    Raises:
        ValueError: any other line that is not a JSON object with ``item_id`` (names the file
            and the line number).
    """
    if not os.path.exists(path):
        return [], None
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    last_number = max((number for number, raw in enumerate(lines, 1) if raw.strip()), default=0)
    records, offset = [], 0
    for number, raw in enumerate(lines, 1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        try:
            records.append(parse_cache_line(raw.decode("utf-8"), path, number))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if number == last_number and raw.lstrip().startswith(b"{"):
                return records, start
            raise DataError(f"Description cache {path}, line {number}: not JSON ({error}); "
                             "is it a description cache?") from error
    return records, None


def read_cache(path):
    """The records of a cache file, tolerating a truncated last line (see :func:`scan_cache`)."""
    records, broken = scan_cache(path)
    if broken is not None:
        logger.warning("%s: ignoring a truncated last line (an interrupted write)", path)
    return records


def prepare_cache(path):
    """Make ``path`` ready for appending and return its records.

    Creates the parent folder, drops a truncated last line left by a crash and makes sure the
    file ends with a newline, so that new records start on a line of their own.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    records, broken = scan_cache(path)
    if broken is not None:
        logger.warning("%s: dropping a truncated last line (an interrupted write)", path)
        os.truncate(path, broken)
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
    return records


def described_items(records, template):
    """item_id -> description of the successful records of ``template`` (the latest wins)."""
    return {str(record["item_id"]): record["description"] for record in records
            if record.get("template") == template and record.get("description")}


def load_descriptions(path, template=None):
    """The descriptions stored in a cache file.

    Args:
        path: JSONL cache written by :func:`generate_descriptions`.
        template: which template's descriptions; ``None`` = the only one in the file.

    Returns:
        dict item_id -> description (the latest one when an item has several).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable lines, or ``template=None`` and the file holds descriptions of
            several templates.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"Description cache {path} not found.")
    records = read_cache(path)
    if template is None:
        found = sorted({record.get("template") for record in records if record.get("description")},
                       key=str)
        if len(found) > 1:
            raise DataError(f"Description cache {path} holds descriptions of templates {found}; "
                             "choose one (template=... / --template).")
        template = found[0] if found else None
    return described_items(records, template)


def append_records(handle, records):
    """Write records as JSON lines, then flush and sync so that a crash loses no batch."""
    handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    handle.flush()
    os.fsync(handle.fileno())


# ---------------------------------------------------------------------------- generation
def open_image(path):
    """The image at ``path`` as an RGB ``PIL.Image`` (raises ``OSError``/``ValueError``)."""
    from PIL import Image

    if not path:
        raise ValueError("no image path in the table")
    with Image.open(path) as image:
        return image.convert("RGB")


def error_text(error):
    """A one-line ``"ExceptionType: message"`` for the cache."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def load_batch_images(paths):
    """Open a batch of images.

    Returns:
        (list of ``PIL.Image`` or ``None``, list of error strings or ``None``), both per item.
    """
    images, errors = [], []
    for path in paths:
        try:
            images.append(open_image(path))
            errors.append(None)
        except Exception as error:  # noqa: BLE001 - missing, truncated, too large, not an image
            images.append(None)
            errors.append(error_text(error))
    return images, errors


def checked_descriptions(describer, images, prompts):
    """``describer.describe`` with its answer checked (one str per item, else
    ``ValueError``/``TypeError``), each answer stripped."""
    outputs = describer.describe(images, prompts)
    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(prompts):
        raise ValueError(f"the describer returned {type(outputs).__name__} of length "
                         f"{len(outputs) if hasattr(outputs, '__len__') else '?'} for "
                         f"{len(prompts)} prompts")
    if not all(isinstance(output, str) for output in outputs):
        raise TypeError("the describer returned non-string descriptions")
    return [output.strip() for output in outputs]


def describe_each(describer, images, prompts):
    """One call per item, so that a failing item keeps its error to itself.

    Returns:
        list of (description or ``None``, error string or ``None``).
    """
    results = []
    for image, prompt in zip(images, prompts):
        try:
            results.append((checked_descriptions(describer, [image], [prompt])[0], None))
        except Exception as error:  # noqa: BLE001 - recorded in the cache and retried next run
            results.append((None, error_text(error)))
    return results


def describe_batch(describer, images, prompts):
    """Describe a batch in one call; if that call fails, item by item.

    Returns:
        list of (description or ``None``, error string or ``None``), one per item; an empty
        description counts as an error.
    """
    try:
        results = [(text, None) for text in checked_descriptions(describer, images, prompts)]
    except Exception as error:  # noqa: BLE001 - any model failure: isolate the bad items
        if len(prompts) == 1:
            results = [(None, error_text(error))]
        else:
            logger.warning("a batch of %d failed (%s); describing its items one by one",
                           len(prompts), error_text(error))
            results = describe_each(describer, images, prompts)
    return [(text, None) if text else (None, error or "ValueError: empty description")
            for text, error in results]


def describer_name(describer):
    """The model name recorded in the cache: the describer's ``name``, else its class name."""
    return str(getattr(describer, "name", "") or type(describer).__name__)


def batch_records(item_ids, paths, prompts, describer, template):
    """Cache records (success or error) of one batch of items, in batch order."""
    images, errors = load_batch_images(paths)
    readable = [k for k, error in enumerate(errors) if error is None]
    results = dict(zip(readable, describe_batch(describer, [images[k] for k in readable],
                                                [prompts[k] for k in readable]))) if readable else {}
    records = []
    for k, item_id in enumerate(item_ids):
        text, error = results.get(k, (None, errors[k]))
        outcome = {"description": text} if error is None else {"error": error}
        records.append({"item_id": item_id, **outcome, "template": template,
                        "model": describer_name(describer)})
    return records


def log_summary(cache_path, n_items, n_cached, written):
    """Log how many items were described before, now, and how many failed (with examples)."""
    failures = [record for record in written if "error" in record]
    logger.info("%s: %d items; %d described before, %d now, %d failed",
                cache_path, n_items, n_cached, len(written) - len(failures), len(failures))
    for record in failures[:5]:
        logger.warning("item %r: %s", record["item_id"], record["error"])
    if len(failures) > 5:
        logger.warning("... and %d more failures (error lines in %s; rerun to retry them)",
                       len(failures) - 5, cache_path)


def generate_descriptions(item_table, cache_path, describer=None, model_name_or_path=DEFAULT_MODEL,
                          template="title", batch_size=8, device=None,
                          max_new_tokens=DEFAULT_MAX_NEW_TOKENS, image_root=None, dtype=None,
                          id_column="item_id", image_column="image", title_column="title",
                          delimiter=None):
    """Describe every item of ``item_table`` that the cache does not already describe.

    Args:
        item_table: CSV/TSV path with columns ``id_column``, ``image_column`` and (for the
            ``title`` template) ``title_column``.
        cache_path: JSONL file the records are appended to (created with its folder if
            needed); also where earlier runs' descriptions are found.
        describer: a :class:`Describer`; default a :class:`TransformersDescriber` of
            ``model_name_or_path`` (built only when some item needs a description).
        model_name_or_path, device, max_new_tokens, dtype: for the default describer.
        template: ``"title"`` or ``"plain"`` (see :func:`build_prompt`).
        batch_size: items per model call and per cache flush.
        image_root: folder for relative image paths; default the table's folder.
        delimiter: column separator of the table; default sniffed from its header line.

    Returns:
        dict item_id -> description for the table's items that have one (earlier and this
        run's); items whose generation failed are absent (their error lines are in the cache).

    Raises:
        ValueError: bad ``template``/``batch_size``, table problems, an unreadable cache.
        FileNotFoundError: missing table.
    """
    if template not in TEMPLATES:
        raise ConfigError(f"template must be one of {TEMPLATES}, got {template!r}.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batch_size = int(batch_size)
    item_table = os.path.abspath(item_table)
    required = [id_column, image_column] + ([title_column] if template == "title" else [])
    frame = read_item_table(item_table, required, delimiter)
    root = image_root if image_root is not None else os.path.dirname(item_table)
    has_path = frame[image_column].str.strip() != ""
    paths = [path if present else "" for path, present in
             zip(resolve_image_paths(frame[image_column].tolist(), root), has_path)]

    done = described_items(prepare_cache(cache_path), template)
    todo = np.flatnonzero(~frame[id_column].isin(list(done)).to_numpy()).tolist()
    logger.info("%s: %d items, %d already described (template %s), %d to describe",
                item_table, len(frame), len(frame) - len(todo), template, len(todo))
    written = []
    if todo:
        titles = frame[title_column].tolist() if template == "title" else [""] * len(frame)
        prompts, untitled = item_prompts([titles[k] for k in todo], template)
        if untitled:
            logger.warning("%d items have no title: they get the plain prompt", untitled)
        if describer is None:
            describer = TransformersDescriber(model_name_or_path, device=device,
                                              max_new_tokens=max_new_tokens, dtype=dtype)
        item_ids = frame[id_column].tolist()
        with open(cache_path, "a", encoding="utf-8") as handle:
            for start in range(0, len(todo), batch_size):
                rows = todo[start:start + batch_size]
                records = batch_records([item_ids[k] for k in rows], [paths[k] for k in rows],
                                        prompts[start:start + batch_size], describer, template)
                append_records(handle, records)
                written.extend(records)
                logger.info("%d/%d items described", min(start + batch_size, len(todo)), len(todo))
    log_summary(cache_path, len(frame), len(frame) - len(todo), written)
    done.update(described_items(written, template))
    return {item_id: done[item_id] for item_id in frame[id_column] if item_id in done}


# ---------------------------------------------------------------------------- command line
def build_parser():
    """argparse parser of the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mm.features.vlm",
        description="Describe each item's image with a vision-language model (VLIF §2.2); "
                    "descriptions are appended to a resumable JSONL cache.",
    )
    add_common_arguments(parser, "CSV/TSV item table (item_id, title, image)")
    parser.add_argument("--cache", required=True, help="JSONL description cache (appended to)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="image-text-to-text model id or path")
    parser.add_argument("--template", default="title", choices=TEMPLATES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--dtype", default=None, help="model weights dtype, e.g. bfloat16 or auto")
    parser.add_argument("--image-root", default=None,
                        help="folder for relative image paths (default: the table's folder)")
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit code (2 for input errors)."""
    args = build_parser().parse_args(argv)
    code, descriptions = run_command(
        generate_descriptions,
        args.items, args.cache, model_name_or_path=args.model, template=args.template,
        batch_size=args.batch_size, device=args.device, max_new_tokens=args.max_new_tokens,
        image_root=args.image_root, dtype=args.dtype, delimiter=args.delimiter,
    )
    if code:
        return code
    print(f"{len(descriptions)} descriptions in {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
