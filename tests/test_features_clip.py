"""recbole_mm.features.clip: CLIP item features from an item table, on a tiny random CLIP
saved to disk (so the from_pretrained path is exercised) with an offline tokenizer."""
import json
import os
import string

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_mm.features import clip
from recbole_mm.features import extract_clip_features

PROJECTION_DIM = 16
COLOURS = {
    "red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230), "yellow": (240, 230, 10),
}
# id, image (relative to the table, except i4's absolute copy of red), text
ROWS = [
    ("i1", "img/red.png", "a red shirt, cotton"),
    ("i2", "img/green.png", "green running shoes"),
    ("i3", "img/blue.png", "blue hat"),
    ("i4", None, "a red shirt, cotton"),          # same content as i1, another file
    ("i5", "img/yellow.png", "a red shirt, cotton"),  # same text as i1, another image
]


def build_tiny_clip(folder):
    """Random CLIP (hidden 32, 2 layers, 2 heads, 32px images, 8px patches, projection 16) and
    its processor (tokenizer from a letters-only vocab.json + merges.txt), saved to folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:  # transformers 5.x without torchvision: the PIL backend (CLIPImageProcessor falls back to it)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as ImageProcessor

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + ",":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    token_dir = folder / "tokenizer_files"
    token_dir.mkdir()
    (token_dir / "vocab.json").write_text(json.dumps(vocab))
    (token_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(token_dir), model_max_length=16)
    image_processor = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)

    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    path = folder / "model"
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def write_table(folder, rows, name="items.csv", delimiter=",", header=("item_id", "image", "text")):
    import csv

    with open(folder / name, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(folder / name)


@pytest.fixture
def items(tmp_path):
    """The ROWS table with real PNGs of different colours and sizes; returns the table path."""
    folder = tmp_path / "items"
    (folder / "img").mkdir(parents=True)
    for k, (colour, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (40 + 4 * k, 36), rgb).save(folder / "img" / f"{colour}.png")
    Image.new("RGB", (40, 36), COLOURS["red"]).save(folder / "red_copy.png")
    rows = [(i, image or str(folder / "red_copy.png"), text) for i, image, text in ROWS]
    return write_table(folder, rows)


def run(table, out_dir, model_path, **kwargs):
    path = extract_clip_features(table, str(out_dir), model_name_or_path=model_path,
                                 batch_size=kwargs.pop("batch_size", 2), device="cpu", **kwargs)
    return np.load(path)


def read_ids(out_dir):
    return (out_dir / clip.ID_FILE).read_text().splitlines()


def reference_embeddings(model_path, image_file, text):
    """Normalised image and text embeddings of one item, straight from the model."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_path).eval()
    processor = CLIPProcessor.from_pretrained(model_path)
    with torch.no_grad():
        pixels = processor.image_processor(images=[Image.open(image_file).convert("RGB")],
                                           return_tensors="pt")["pixel_values"]
        image = model.get_image_features(pixel_values=pixels)
        tokens = processor.tokenizer([text], truncation=True, max_length=16, return_tensors="pt")
        text = model.get_text_features(**tokens)
    image, text = clip.pooled_embedding(image), clip.pooled_embedding(text)
    return (torch.nn.functional.normalize(image, dim=-1)[0].numpy(),
            torch.nn.functional.normalize(text, dim=-1)[0].numpy())


# ---------------------------------------------------------------------------- 1. shapes, order
def test_shapes_order_normalisation_and_combine_modes(items, model_path, tmp_path):
    out = {mode: run(items, tmp_path / mode, model_path, combine=mode) for mode in clip.COMBINE_MODES}
    n = len(ROWS)
    for mode, matrix in out.items():
        assert matrix.dtype == np.float32
        assert matrix.shape == (n, 2 * PROJECTION_DIM if mode == "concat" else PROJECTION_DIM)
        assert read_ids(tmp_path / mode) == [row[0] for row in ROWS]
        assert not (tmp_path / mode / clip.STAGING_DIR).exists()
    np.testing.assert_allclose(np.linalg.norm(out["image"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["mean"], (out["image"] + out["text"]) / 2, atol=1e-6)
    np.testing.assert_allclose(out["concat"], np.hstack([out["image"], out["text"]]), atol=1e-6)
    # mean of two different unit vectors is shorter than 1: it is not renormalised
    assert np.all(np.linalg.norm(out["mean"], axis=1) < 1 - 1e-3)

    # row 0 is item i1 as the model itself embeds it
    image_ref, text_ref = reference_embeddings(
        model_path, os.path.join(os.path.dirname(items), ROWS[0][1]), ROWS[0][2])
    np.testing.assert_allclose(out["image"][0], image_ref, atol=1e-5)
    np.testing.assert_allclose(out["text"][0], text_ref, atol=1e-5)

    # row k follows the table's order: a reversed table gives reversed rows and ids
    folder = os.path.dirname(items)
    with open(items, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    reversed_table = os.path.join(folder, "reversed.csv")
    with open(reversed_table, "w", encoding="utf-8") as handle:
        handle.write("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    flipped = run(reversed_table, tmp_path / "reversed", model_path, combine="mean")
    assert read_ids(tmp_path / "reversed") == [row[0] for row in ROWS][::-1]
    np.testing.assert_allclose(flipped, out["mean"][::-1], atol=1e-5)


def test_long_text_is_truncated_to_the_model_length(items, model_path, tmp_path):
    folder = os.path.dirname(items)
    long_text = " ".join(["word"] * 200)
    table = write_table(tmp_path, [("a", os.path.join(folder, "img/red.png"), long_text),
                                   ("b", os.path.join(folder, "img/red.png"), long_text + " more")])
    matrix = run(table, tmp_path / "out", model_path, combine="text")
    assert np.isfinite(matrix).all()
    # both texts share their first 16 tokens (the model's limit), so they embed the same
    np.testing.assert_allclose(matrix[0], matrix[1], atol=1e-6)


# ---------------------------------------------------------------------------- 2. determinism
def test_same_content_same_row_and_different_images_differ(items, model_path, tmp_path):
    first = run(items, tmp_path / "a", model_path)
    second = run(items, tmp_path / "b", model_path)
    np.testing.assert_array_equal(first, second)
    i1, i4, i5 = 0, 3, 4
    np.testing.assert_allclose(first[i1], first[i4], atol=1e-6)    # same image content + text
    assert np.abs(first[i1] - first[i5]).max() > 1e-3               # same text, other image
    assert np.abs(first[0] - first[1]).max() > 1e-3


# ---------------------------------------------------------------------------- 3. resume
def test_interrupted_run_resumes_with_only_missing_batches(items, model_path, tmp_path, monkeypatch):
    expected = run(items, tmp_path / "uninterrupted", model_path)
    original = clip.encode_batch
    calls = []

    def interrupted_after_first_batch(*args, **kwargs):
        calls.append(list(args[2]))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return original(*args, **kwargs)

    monkeypatch.setattr(clip, "encode_batch", interrupted_after_first_batch)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="interrupted"):
        run(items, out, model_path)
    staging = out / clip.STAGING_DIR
    assert sorted(os.listdir(staging)) == ["batch_000000.npy", clip.MANIFEST_FILE]
    assert not (out / clip.FEATURE_FILE).exists() and not (out / clip.ID_FILE).exists()

    # other arguments do not mix with the partial run
    with pytest.raises(ValueError, match="other arguments"):
        run(items, out, model_path, combine="image")
    assert (staging / "batch_000000.npy").exists()

    calls.clear()
    monkeypatch.setattr(clip, "encode_batch", lambda *a, **k: calls.append(list(a[2])) or original(*a, **k))
    result = run(items, out, model_path)
    assert calls == [["i3", "i4"], ["i5"]]            # batches 1 and 2 only
    np.testing.assert_array_equal(result, expected)
    assert read_ids(out) == [row[0] for row in ROWS]
    assert not staging.exists()


def test_mismatched_partial_run_is_discarded_with_overwrite(items, model_path, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = clip.encode_batch

    def fail_second(*args, **kwargs):
        fail_second.calls += 1
        if fail_second.calls == 2:
            raise RuntimeError("interrupted")
        return original(*args, **kwargs)

    fail_second.calls = 0
    monkeypatch.setattr(clip, "encode_batch", fail_second)
    with pytest.raises(RuntimeError):
        run(items, out, model_path, combine="image")
    fail_second.calls = -10                            # no more failures; count all batches
    result = run(items, out, model_path, combine="text", overwrite=True)
    assert fail_second.calls == -10 + 3                # all 3 batches recomputed
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result, run(items, tmp_path / "fresh", model_path, combine="text"))


# ---------------------------------------------------------------------------- 4. input errors
def forbid_model_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("model work started before the inputs were checked")

    monkeypatch.setattr(clip, "load_clip", fail)
    monkeypatch.setattr(clip, "encode_batch", fail)


def test_missing_image_is_reported_before_any_model_work(items, model_path, tmp_path, monkeypatch):
    forbid_model_work(monkeypatch)
    missing = os.path.join(os.path.dirname(items), "img", "blue.png")
    os.remove(missing)
    with pytest.raises(FileNotFoundError) as error:
        run(items, tmp_path / "out", model_path)
    assert "'i3'" in str(error.value) and missing in str(error.value)
    assert not (tmp_path / "out" / clip.STAGING_DIR).exists()


def test_unreadable_image_is_reported_before_any_model_work(items, model_path, tmp_path, monkeypatch):
    forbid_model_work(monkeypatch)
    broken = os.path.join(os.path.dirname(items), "img", "green.png")
    with open(broken, "w") as handle:
        handle.write("not a png")
    with pytest.raises(ValueError) as error:
        run(items, tmp_path / "out", model_path)
    assert "'i2'" in str(error.value) and broken in str(error.value)


def test_table_validation(tmp_path, model_path, monkeypatch):
    forbid_model_work(monkeypatch)
    no_text = write_table(tmp_path, [("a", "x.png")], name="no_text.csv", header=("item_id", "image"))
    with pytest.raises(ValueError, match=r"no_text\.csv.*\['text'\]"):
        run(no_text, tmp_path / "out", model_path)
    twice = write_table(tmp_path, [("a", "x.png", "t"), ("b", "y.png", "u"), ("a", "z.png", "v")],
                        name="twice.tsv", delimiter="\t")
    with pytest.raises(ValueError, match=r"twice\.tsv.*appear more than once.*'a'"):
        run(twice, tmp_path / "out", model_path)
    with pytest.raises(ValueError, match="combine"):
        run(twice, tmp_path / "out", model_path, combine="sum")


# ---------------------------------------------------------------------------- 5. overwrite
def test_existing_output_is_kept_without_overwrite(items, model_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / clip.FEATURE_FILE, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(FileExistsError, match=clip.FEATURE_FILE):
        run(items, out, model_path)
    assert np.load(out / clip.FEATURE_FILE).shape == (2, 3)
    assert not (out / clip.ID_FILE).exists()

    matrix = run(items, out, model_path, overwrite=True)
    assert matrix.shape == (len(ROWS), PROJECTION_DIM)
    with pytest.raises(FileExistsError, match=clip.ID_FILE):  # the id file alone also counts
        os.remove(out / clip.FEATURE_FILE)
        run(items, out, model_path)


# ---------------------------------------------------------------------------- 6. command line
def test_command_line(items, model_path, tmp_path, capsys):
    out = tmp_path / "cli"
    code = clip.main(["--items", items, "--out", str(out), "--model", model_path,
                      "--combine", "concat", "--batch-size", "3", "--device", "cpu"])
    assert code == 0
    matrix = np.load(out / clip.FEATURE_FILE)
    assert matrix.shape == (len(ROWS), 2 * PROJECTION_DIM)
    assert read_ids(out) == [row[0] for row in ROWS]
    np.testing.assert_allclose(matrix, run(items, tmp_path / "api", model_path, combine="concat"),
                               atol=1e-5)

    capsys.readouterr()
    bad = write_table(tmp_path, [("a", "x.png")], name="bad.csv", header=("item_id", "picture"))
    code = clip.main(["--items", bad, "--out", str(tmp_path / "bad"), "--model", model_path])
    assert code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith("error:") and "bad.csv" in message and "image" in message


# ---------------------------------------------------------------------------- 7. dataset
def test_features_load_through_the_dataset(items, model_path, tmp_path):
    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset

    name = "clipdata"
    data_root = tmp_path / "dataset"
    folder = data_root / name
    matrix = run(items, folder, model_path)
    tokens = read_ids(folder)
    rng = np.random.default_rng(0)
    pairs = [(u, tokens[j]) for u in range(30) for j in rng.choice(len(tokens), 3, replace=False)]
    lines = ["user_id:token\titem_id:token"] + [f"u{u}\t{i}" for u, i in pairs]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")

    config = Config("BPR", name, config_dict={
        "data_path": str(data_root), "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING",
        "modality_files": {"clip": clip.FEATURE_FILE}, "feature_id_map": clip.ID_FILE,
    })
    dataset = create_dataset(config)
    features = dataset.modality_features["clip"]
    assert features.shape == (len(tokens) + 1, PROJECTION_DIM)
    for row, token in enumerate(tokens):
        assert torch.equal(features[dataset.token2id("item_id", token)], torch.from_numpy(matrix[row]))
