"""recbole_mm.prepare: raw interactions + item table -> an MMRec dataset folder."""
import collections
import gzip
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from recbole_mm.data.mmrec_format import read_mmrec_inter
from recbole_mm.prepare import PrepareError, kcore, prepare_dataset, split_labels

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_USERS, N_ITEMS = 40, 24


# ---------------------------------------------------------------------------- fixtures
def review_rows(seed=0):
    """Amazon-style reviews: every user rates 8 of the items, with distinct times."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(N_USERS):
        for rank, item in enumerate(rng.choice(N_ITEMS, 8, replace=False)):
            rows.append({"reviewerID": f"U{user:03d}", "asin": f"B{item:04d}", "overall": float(1 + (user + item) % 5),
                         "unixReviewTime": 1_300_000_000 + 1000 * rank + user, "reviewText": "fine"})
    return rows


def meta_rows(image=lambda item: ""):
    return [{"asin": f"B{item:04d}", "title": f"Product {item}", "brand": f"Brand{item % 3}",
             "categories": [["Baby", f"Cat{item % 4}"]], "description": f"A product number {item}.",
             "imUrl": image(item)} for item in range(N_ITEMS)]


def write_json_lines(path, rows, gz=False, literal=False):
    text = "".join((repr(row) if literal else json.dumps(row)) + "\n" for row in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return str(path)


class CountingEncoder:
    """A text encoder stand-in: 8-d vectors from the text's hash; counts its calls."""

    name = "counting-encoder"

    def __init__(self):
        self.calls = 0

    def encode(self, texts, batch_size=64):
        self.calls += 1
        out = np.array([np.random.default_rng(abs(hash(t)) % 2 ** 32).standard_normal(8) for t in texts],
                       dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def png_bytes(seed):
    from PIL import Image

    array = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_server():
    """127.0.0.1 server: /good/<n>.png images, /missing/... 404, /slow/... too slow,
    /text/... an HTML page served as text/html, /fake/... HTML served as image/png."""
    hits = collections.Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits[self.path] += 1
            kind = self.path.split("/")[1]
            if kind == "good":
                body, ctype = png_bytes(int(self.path.split("/")[2].split(".")[0])), "image/png"
            elif kind == "slow":
                time.sleep(2.5)
                body, ctype = png_bytes(0), "image/png"
            elif kind in ("text", "fake"):
                body, ctype = b"<html>not an image</html>", "text/html" if kind == "text" else "image/png"
            else:
                self.send_error(404)
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops concurrent connections (the client then times out)

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield base, hits
    server.shutdown()
    server.server_close()


def url_of(base):
    """Items 0-15 good, 16-17 404, 18 slow, 19 text/html, 20 an 'image/png' that is HTML, 21+ none."""
    def image(item):
        if item < 16:
            return f"{base}/good/{item}.png"
        return {16: f"{base}/missing/16.png", 17: f"{base}/missing/17.png", 18: f"{base}/slow/18.png",
                19: f"{base}/text/19.png", 20: f"{base}/fake/20.png"}.get(item, "")
    return image


def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    import torch

    torch.manual_seed(0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config).eval(), processor


class CountingModel:
    """Wraps a model; counts forward calls (any attribute is the model's)."""

    def __init__(self, model, interrupt_at=None):
        self.__dict__.update(model=model, calls=0, interrupt_at=interrupt_at)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def get_image_features(self, *args, **kwargs):
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the encoding
        self.__dict__["calls"] += 1
        return self.model.get_image_features(*args, **kwargs)

    def to(self, *args, **kwargs):
        self.model.to(*args, **kwargs)
        return self

    def eval(self):
        self.model.eval()
        return self


def fast(**overrides):
    options = dict(images=False, text_encoder=CountingEncoder(), timeout=0.5, retries=0)
    options.update(overrides)
    return options


def train_one_epoch(data_path, name, model="FREEDOM"):
    from recbole_mm.quick_start import run_recbole_mm

    return run_recbole_mm(model, name, config_dict={
        "data_path": str(data_path), "epochs": 1, "state": "WARNING", "show_progress": False,
        "checkpoint_dir": os.path.join(str(data_path), "saved"), "train_batch_size": 256, "eval_batch_size": 4096,
        "topk": [5, 10, 20]})


# ---------------------------------------------------------------------------- unit
def test_kcore_reaches_the_fixed_point():
    # user 3 has one item (1); dropping it leaves item 1 with user 0 only, then user 0 with one item
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 0, 2, 0, 2, 1])
    keep, passes = kcore(users, items, 2, 2)
    assert passes == 4
    kept_users, kept_items = users[keep], items[keep]
    assert np.all(np.bincount(kept_users)[np.unique(kept_users)] >= 2)
    assert np.all(np.bincount(kept_items)[np.unique(kept_items)] >= 2)
    assert set(zip(kept_users, kept_items)) == {(1, 0), (1, 2), (2, 0), (2, 2)}


def test_mmrec_split_is_per_user_8_1_1_and_chronological():
    users = np.repeat(np.arange(3), [10, 20, 2])
    times = np.concatenate([np.arange(10)[::-1], np.arange(20), [0, 1]]).astype(float)
    labels = split_labels(users, times, "mmrec", seed=0)
    first = labels[:10]
    assert list(first[times[:10].argsort()]) == [0] * 8 + [1, 2]  # latest is test, the one before valid
    assert np.bincount(labels[10:30]).tolist() == [16, 2, 2]
    assert labels[30:].tolist() == [0, 0]  # fewer than 3 interactions: all train
    loo = split_labels(users, times, "loo", seed=0)
    assert np.bincount(loo[10:30]).tolist() == [18, 1, 1] and loo[19 + 10] == 2


# ---------------------------------------------------------------------------- end to end
def test_amazon_gzip_with_literal_meta_trains_freedom_without_yaml(tmp_path):
    reviews = write_json_lines(tmp_path / "reviews_Baby_5.json.gz", review_rows(), gz=True)
    meta = write_json_lines(tmp_path / "meta_Baby.json.gz", meta_rows(), gz=True, literal=True)
    result = prepare_dataset(reviews, meta, "baby_mine", tmp_path / "data", **fast())
    folder = tmp_path / "data" / "baby_mine"
    inter = read_mmrec_inter(folder / "baby_mine.inter")
    assert set(inter.columns) == {"userID", "itemID", "x_label", "rating", "timestamp"}
    assert inter["userID"].max() + 1 == N_USERS and inter["itemID"].max() + 1 == N_ITEMS
    text = np.load(folder / "text_feat.npy")
    assert text.shape == (N_ITEMS, 8)
    items = pd.read_csv(folder / "i_id_mapping.csv", sep="\t")
    users = pd.read_csv(folder / "u_id_mapping.csv", sep="\t")
    assert items["itemID"].tolist() == list(range(N_ITEMS)) and items.iloc[3, 0] == "B0003"
    assert users.iloc[0, 0] == "U000"
    # row 3 of text_feat is the encoding of B0003's MMRec text
    expected = CountingEncoder().encode(["Product 3 Brand0 Baby Cat3 A product number 3."])[0]
    np.testing.assert_allclose(text[3], expected, rtol=1e-6)
    # chronological: each user's test item is their latest
    raw = pd.DataFrame(review_rows())
    latest = raw.loc[raw.groupby("reviewerID")["unixReviewTime"].idxmax()]
    user0_test = inter[(inter.userID == 0) & (inter.x_label == 2)].itemID.tolist()
    assert items.iloc[user0_test[0], 0] == latest.iloc[0]["asin"]
    assert "--dataset=baby_mine" in result.command and "train" in result.summary()
    # FREEDOM on the text-only folder: one epoch, no yaml
    outcome = train_one_epoch(tmp_path / "data", "baby_mine")
    assert outcome["test_result"] is not None


def test_images_downloaded_encoded_and_resumed(tmp_path, image_server):
    base, hits = image_server
    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    meta = write_json_lines(tmp_path / "meta.json", meta_rows(url_of(base)))
    model, processor = tiny_clip()
    counting = CountingModel(model)
    encoder = CountingEncoder()
    options = dict(text_encoder=encoder, image_model=counting, image_processor=processor, timeout=1.0, retries=1,
                   missing_image="zero", device="cpu")
    result = prepare_dataset(reviews, meta, "withimg", tmp_path / "data", **options)
    folder = tmp_path / "data" / "withimg"
    image = np.load(folder / "image_feat.npy")
    mask = np.load(folder / "image_mask.npy")
    assert image.shape == (N_ITEMS, 16) and mask.dtype == bool
    assert mask.tolist() == [True] * 16 + [False] * (N_ITEMS - 16)
    assert np.all(image[~mask] == 0) and np.all(np.abs(np.linalg.norm(image[mask], axis=1) - 1) < 1e-4)
    counts = result.images
    assert counts["with image"] == 16 and counts["missing"] == N_ITEMS - 16
    assert counts["HTTP 404"] == 2 and counts["timeout"] == 1
    assert counts["wrong Content-Type"] == 1 and counts["not an image"] == 1  # text/html; HTML sent as image/png
    assert counts["no image given"] == N_ITEMS - 21
    assert hits["/slow/18.png"] == 2 and hits["/missing/16.png"] == 1  # a timeout is retried, a 404 is not
    assert counting.calls > 0 and encoder.calls > 0
    # the folder trains with both modalities
    assert train_one_epoch(tmp_path / "data", "withimg")["test_result"] is not None

    # a second run into another folder: nothing downloaded or encoded again
    before = sum(hits.values())
    counting.__dict__["calls"], encoder.calls = 0, 0
    again = prepare_dataset(reviews, meta, "withimg2", tmp_path / "data", **options)
    assert sum(hits.values()) == before
    assert counting.calls == 0 and encoder.calls == 0
    np.testing.assert_array_equal(np.load(tmp_path / "data" / "withimg2" / "image_feat.npy"), image)
    assert again.images["HTTP 404"] == 2
    # the same folder, same arguments: left as it is
    assert prepare_dataset(reviews, meta, "withimg", tmp_path / "data", **options).reused


def test_missing_image_mean_and_drop(tmp_path, image_server):
    base, _ = image_server
    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    meta = write_json_lines(tmp_path / "meta.json", meta_rows(url_of(base)))
    model, processor = tiny_clip()
    options = dict(text_encoder=CountingEncoder(), image_model=model, image_processor=processor, timeout=1.0,
                   retries=0, kcore_k=2)
    prepare_dataset(reviews, meta, "mean", tmp_path / "data", **options)
    image = np.load(tmp_path / "data" / "mean" / "image_feat.npy")
    np.testing.assert_allclose(image[20], image[:16].mean(axis=0), rtol=1e-5)
    prepare_dataset(reviews, meta, "dropped", tmp_path / "data", missing_image="drop", **options)
    items = pd.read_csv(tmp_path / "data" / "dropped" / "i_id_mapping.csv", sep="\t")
    assert len(items) == 16 and np.load(tmp_path / "data" / "dropped" / "image_mask.npy").all()


def test_generic_vision_model_and_local_paths(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    images = tmp_path / "img"
    images.mkdir()
    for item in range(N_ITEMS - 1):
        (images / f"{item}.png").write_bytes(png_bytes(item))
    (images / "bad.png").write_text("not an image")
    table = pd.DataFrame({"item_id": [f"B{i:04d}" for i in range(N_ITEMS)],
                          "title": [f"Product {i}" for i in range(N_ITEMS)],
                          "image_path": [f"img/{i}.png" for i in range(N_ITEMS - 1)] + ["img/bad.png"]})
    table.to_csv(tmp_path / "items.csv", index=False)
    pd.DataFrame(review_rows()).rename(columns={"reviewerID": "user", "asin": "item", "unixReviewTime": "ts"})[
        ["user", "item", "ts"]].to_csv(tmp_path / "inter.tsv", sep="\t", index=False)
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                               image_size=32, patch_size=8))
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    result = prepare_dataset(str(tmp_path / "inter.tsv"), str(tmp_path / "items.csv"), "vit", tmp_path / "data",
                             time_col="ts", text_encoder=CountingEncoder(), image_model=model,
                             image_processor=processor, device="cpu")
    image = np.load(tmp_path / "data" / "vit" / "image_feat.npy")
    assert image.shape == (N_ITEMS, 32) and result.images["not an image"] == 1
    inter = read_mmrec_inter(tmp_path / "data" / "vit" / "vit.inter")
    assert "timestamp" in inter and "rating" not in inter


def test_csv_and_json_lines_inputs_random_and_loo_splits(tmp_path):
    rows = pd.DataFrame(review_rows())
    rows.rename(columns={"reviewerID": "user_id", "asin": "item_id", "overall": "rating"})[
        ["user_id", "item_id", "rating"]].to_csv(tmp_path / "inter.csv", index=False)
    items = pd.DataFrame(meta_rows()).rename(columns={"asin": "item_id"})
    with open(tmp_path / "items.jsonl", "w") as handle:
        for row in items.to_dict("records"):
            handle.write(json.dumps(row) + "\n")
    for split in ("random", "loo"):
        prepare_dataset(str(tmp_path / "inter.csv"), str(tmp_path / "items.jsonl"), split, tmp_path / "data",
                        split=split, min_rating=2, kcore_k=1, seed=3, **fast())
        inter = read_mmrec_inter(tmp_path / "data" / split / f"{split}.inter")
        assert len(inter) == int((rows["overall"] >= 2).sum())
        shares = np.bincount(inter["x_label"], minlength=3) / len(inter)
        if split == "random":
            np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.02)
        else:
            per_user = inter.groupby("userID")["x_label"].apply(lambda s: (s == 2).sum())
            assert (per_user[inter.groupby("userID").size() >= 3] == 1).all()


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case, message", [
    ("missing", "interactions file {d}/nope.json not found"),
    ("empty", "interactions file {d}/empty.json is empty"),
    ("column", "unknown column 'buyer' (user); the columns are"),
    ("json", "unparseable JSON on line 3"),
    ("absent", "2 of 24 items"),
    ("kcore", "leaves no interactions"),
])
def test_bad_input_messages(tmp_path, case, message):
    rows = review_rows()
    reviews = write_json_lines(tmp_path / "reviews.json", rows)
    meta = write_json_lines(tmp_path / "meta.json", meta_rows())
    kwargs = {}
    if case == "missing":
        reviews = str(tmp_path / "nope.json")
    elif case == "empty":
        (tmp_path / "empty.json").write_text("")
        reviews = str(tmp_path / "empty.json")
    elif case == "column":
        kwargs["user_col"] = "buyer"
    elif case == "json":
        lines = open(reviews).read().splitlines()
        lines[2] = lines[2][:-5]
        open(reviews, "w").write("\n".join(lines) + "\n")
    elif case == "absent":
        meta = write_json_lines(tmp_path / "meta.json", meta_rows()[:-2])
    elif case == "kcore":
        kwargs["kcore_k"] = 50
    with pytest.raises(PrepareError) as caught:
        prepare_dataset(reviews, meta, "bad", tmp_path / "data", **fast(**kwargs))
    text = str(caught.value)
    assert message.format(d=tmp_path) in text and "\n" not in text
    assert not (tmp_path / "data" / "bad").exists()
    assert not [name for name in os.listdir(tmp_path / "data")] if (tmp_path / "data").exists() else True


def test_absent_items_dropped_or_kept_by_flag(tmp_path):
    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    meta = write_json_lines(tmp_path / "meta.json", meta_rows()[:-2])
    prepare_dataset(reviews, meta, "dropped", tmp_path / "data", missing_items="drop", kcore_k=1, **fast())
    prepare_dataset(reviews, meta, "kept", tmp_path / "data", missing_items="keep", kcore_k=1, **fast())
    assert len(pd.read_csv(tmp_path / "data" / "dropped" / "i_id_mapping.csv", sep="\t")) == N_ITEMS - 2
    assert len(pd.read_csv(tmp_path / "data" / "kept" / "i_id_mapping.csv", sep="\t")) == N_ITEMS


def test_refuses_a_folder_holding_another_dataset(tmp_path):
    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    meta = write_json_lines(tmp_path / "meta.json", meta_rows())
    prepare_dataset(reviews, meta, "ds", tmp_path / "data", **fast())
    with pytest.raises(PrepareError, match="already holds a dataset prepared from other inputs"):
        prepare_dataset(reviews, meta, "ds", tmp_path / "data", **fast(kcore_k=3))
    other = tmp_path / "data" / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="already holds other files"):
        prepare_dataset(reviews, meta, "mine", tmp_path / "data", **fast())
    prepare_dataset(reviews, meta, "ds", tmp_path / "data", **fast(kcore_k=3, overwrite=True))
    assert json.load(open(tmp_path / "data" / "ds" / "prepare_meta.json"))["arguments"]["kcore"] == [3, 3]


def test_cli_exit_status_2_with_one_line(tmp_path, capsys):
    from recbole_mm.prepare import main

    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    lines = open(reviews).read().splitlines()
    lines[4] = "{not json"
    open(reviews, "w").write("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "recbole_mm.prepare", "--interactions", reviews,
                          "--data-path", str(tmp_path / "data"), "--no-text"], capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {reviews}: unparseable JSON on line 5")
    assert not os.path.exists(tmp_path / "data" / "reviews")
    good = write_json_lines(tmp_path / "good.json", review_rows())
    assert main(["--interactions", good, "--user-col", "buyer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {good}: unknown column 'buyer' (user); the columns are [")


# ---------------------------------------------------------------------------- ml100k_text
@pytest.mark.slow
def test_ml100k_text_is_built_on_first_use_and_trains_vbpr(tmp_path):
    from recbole_mm.features.text import SentenceEncoder
    from recbole_mm.quick_start import run_recbole_mm

    config = {"data_path": str(tmp_path / "dataset"), "epochs": 1, "state": "WARNING", "show_progress": False,
              "checkpoint_dir": str(tmp_path / "saved")}
    result = run_recbole_mm("VBPR", "ml100k_text", config_dict=config)
    assert result["test_result"] is not None
    folder = tmp_path / "dataset" / "ml100k_text"
    text = np.load(folder / "text_feat.npy")
    items = pd.read_csv(folder / "i_id_mapping.csv", sep="\t", dtype=str)
    assert text.shape == (len(items), 384) and len(items) > 1000
    toy_story = int(items.loc[items["item_id"] == "1", "itemID"].iloc[0])
    expected = SentenceEncoder(device="cpu").encode(["Toy Story (1995). Animation, Children's, Comedy"])[0]
    np.testing.assert_allclose(text[toy_story], expected, atol=1e-5)
    stamp = os.path.getmtime(folder / "text_feat.npy")
    run_recbole_mm("BPR", "ml100k_text", config_dict=config)  # second use: not rebuilt
    assert os.path.getmtime(folder / "text_feat.npy") == stamp


def test_bundled_builder_leaves_own_data_alone(tmp_path):
    from recbole_mm.data.bundled import ensure_bundled_dataset
    from recbole_mm.errors import ConfigError

    own = tmp_path / "ml100k_text"
    own.mkdir()
    (own / "ml100k_text.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    assert ensure_bundled_dataset(str(own), "ml100k_text", "ml100k_text") is False
    assert (own / "ml100k_text.inter").read_text().startswith("userID")
    with pytest.raises(ConfigError, match="unknown builder 'nope'"):
        ensure_bundled_dataset(str(own), "ml100k_text", "nope")


# ---------------------------------------------------------------------------- more features
class WordTokenizer:
    """A tokenizer stand-in for the tiny CLIP's text tower: one id per word."""

    model_max_length = 16

    def __call__(self, texts, padding=True, truncation=True, max_length=16, return_tensors="pt"):
        import torch

        ids = [[sum(map(ord, word)) % 97 + 1 for word in text.split()][:max_length] or [1] for text in texts]
        width = max(map(len, ids))
        return {"input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids]),
                "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])}


class FixedDescriber:
    """A VLM stand-in (features.vlm.Describer): the same description for every image."""

    def __init__(self):
        self.calls = 0

    def describe(self, images, prompts):
        self.calls += 1
        return ["a small red object"] * len(images)


def test_clip_joint_and_vlm_descriptions(tmp_path, image_server):
    from types import SimpleNamespace

    base, _ = image_server
    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    meta = write_json_lines(tmp_path / "meta.json", meta_rows(url_of(base)))
    model, image_processor = tiny_clip()
    processor = SimpleNamespace(image_processor=image_processor, tokenizer=WordTokenizer())
    encoder, describer = CountingEncoder(), FixedDescriber()
    prepare_dataset(reviews, meta, "joint", tmp_path / "data", text_encoder=encoder, image_model=model,
                    image_processor=image_processor, clip=True, clip_model=model, clip_processor=processor,
                    vlm_describer=describer, timeout=1.0, retries=0, device="cpu")
    folder = tmp_path / "data" / "joint"
    joint, mask = np.load(folder / "clip_feat.npy"), np.load(folder / "image_mask.npy")
    assert joint.shape == (N_ITEMS, 16)
    norms = np.linalg.norm(joint, axis=1)
    assert np.all(np.abs(norms[~mask] - 1) < 1e-4) and np.all(norms[mask] < 1 - 1e-3)  # text only / mean of two
    vlm = np.load(folder / "image_feat_vlm.npy")
    assert vlm.shape == (N_ITEMS, 8) and describer.calls > 0
    np.testing.assert_allclose(vlm[3], encoder.encode(["Product 3. a small red object"])[0], rtol=1e-6)
    np.testing.assert_allclose(vlm[22], encoder.encode(["Product 22. "])[0], rtol=1e-6)  # no image, no description


def test_download_size_cap_and_recorded_failures(tmp_path, image_server):
    from recbole_mm.prepare import download_images

    base, hits = image_server
    urls = [f"{base}/good/1.png", f"{base}/missing/2.png"]
    paths, report = download_images(urls, str(tmp_path / "cache"), timeout=2.0, retries=0, max_bytes=100)
    assert paths == {} and report.failed == {"larger than 100 bytes": 1, "HTTP 404": 1}
    paths, report = download_images(urls, str(tmp_path / "cache"), timeout=2.0, retries=0, max_bytes=100)
    assert sum(hits.values()) == 2 and report.failed == {"larger than 100 bytes": 1, "HTTP 404": 1}
    paths, report = download_images(urls, str(tmp_path / "cache"), timeout=2.0, retries=0, retry_failed=True)
    assert list(paths) == [urls[0]] and hits[f"/good/1.png"] == 2


def test_amazon_2018_meta_fields_and_contentless_items(tmp_path, monkeypatch):
    import recbole_mm.prepare as prepare
    from recbole_mm.prepare import read_item_table

    parsed = []
    original = prepare._parse_line
    monkeypatch.setattr(prepare, "_parse_line", lambda line, *args: parsed.append(line) or original(line, *args))

    rows = [{"asin": f"B{item:04d}", "title": f"Product {item}" if item != 5 else "",
             "category": ["Baby", f"Cat{item % 4}"], "description": [f"Line one of {item}.", "Line two."],
             "brand": "", "imageURLHighRes": [f"http://x.invalid/{item}a.jpg", "http://x.invalid/b.jpg"]}
            for item in range(N_ITEMS)]
    rows[5]["category"], rows[5]["description"], rows[5]["imageURLHighRes"] = [], [], []
    meta = write_json_lines(tmp_path / "Baby.json.gz", rows, gz=True)
    table = read_item_table(meta, {"B0003", "B0005"}).set_index("item")
    assert sorted(table.index) == ["B0003", "B0005"]
    assert len(parsed) == 3  # the first line (to learn the fields) and the two wanted items' lines
    assert table.loc["B0003", "description"] == "Line one of 3. Line two."
    assert table.loc["B0003", "image"] == "http://x.invalid/3a.jpg"
    from recbole_mm.features.text import first_category_path

    assert first_category_path(table.loc["B0003", "categories"]) == "Baby Cat3"
    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    prepare_dataset(reviews, meta, "kept", tmp_path / "data", kcore_k=1, **fast())
    prepare_dataset(reviews, meta, "dropped", tmp_path / "data", kcore_k=1, drop_contentless=True, **fast())
    kept = pd.read_csv(tmp_path / "data" / "kept" / "i_id_mapping.csv", sep="\t")
    dropped = pd.read_csv(tmp_path / "data" / "dropped" / "i_id_mapping.csv", sep="\t")
    assert "B0005" in kept["asin"].tolist() and "B0005" not in dropped["asin"].tolist()
    assert len(dropped) == N_ITEMS - 1


def test_interrupted_image_encoding_resumes_from_its_finished_batches(tmp_path, image_server):
    base, _ = image_server
    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    meta = write_json_lines(tmp_path / "meta.json", meta_rows(url_of(base)))
    model, processor = tiny_clip()
    options = dict(text_encoder=CountingEncoder(), image_processor=processor, timeout=1.0, retries=0,
                   device="cpu", batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(reviews, meta, "resumed", tmp_path / "data", image_model=CountingModel(model, interrupt_at=2), **options)
    assert not (tmp_path / "data" / "resumed").exists()
    counting = CountingModel(model)
    prepare_dataset(reviews, meta, "resumed", tmp_path / "data", image_model=counting, **options)
    assert counting.calls == 2  # 16 images in batches of 4: the first two were kept
    fresh = CountingModel(model)
    prepare_dataset(reviews, meta, "fresh", tmp_path / "other", image_model=fresh, **options)
    assert fresh.calls == 4
    np.testing.assert_allclose(np.load(tmp_path / "data" / "resumed" / "image_feat.npy"),
                               np.load(tmp_path / "other" / "fresh" / "image_feat.npy"), atol=1e-6)


@pytest.mark.parametrize("option, message", [
    ({"text_template": "{title"}, "is not a format string"),
    ({"text_template": "{0} {}"}, "must name item-table columns"),
    ({"text_template": "{nope}"}, "unknown column 'nope' (text template); the columns are"),
    ({"name": "../escape"}, "name must be a plain folder name"),
    ({"split": "time"}, "split must be one of ['mmrec', 'random', 'loo']"),
])
def test_bad_options_are_one_line_errors(tmp_path, option, message):
    from recbole_mm.errors import RecboleMMError

    reviews = write_json_lines(tmp_path / "reviews.json", review_rows())
    meta = write_json_lines(tmp_path / "meta.json", meta_rows())
    arguments = {"name": "ds", **option}
    with pytest.raises(RecboleMMError) as caught:
        prepare_dataset(reviews, meta, data_path=tmp_path / "data", **fast(**arguments))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "data").exists() or not os.listdir(tmp_path / "data")
