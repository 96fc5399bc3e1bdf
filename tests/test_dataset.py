"""MultiModalDataset: feature alignment with RecBole's ids, MMRec folders, input validation."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_mm.config import Config
from recbole_mm.data import DatasetNotFoundError, FeatureFileError, create_dataset, data_preparation
from tests.conftest import REPO_ROOT


def write_atomic(folder, name, pairs):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in pairs]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")


def load(tmp_path, name, run_config, **overrides):
    config = Config("BPR", name, config_dict=run_config(
        data_path=str(tmp_path / "data"), synthetic_generator=None, **overrides))
    return create_dataset(config)


def test_features_follow_items_when_tokens_are_permuted(tmp_path, run_config):
    rng = np.random.default_rng(0)
    n_items, dim = 25, 6
    tokens = [f"item{j}" for j in range(n_items)]
    raw = rng.standard_normal((n_items, dim)).astype(np.float32)
    feature_row = rng.permutation(n_items)            # token j lives in row feature_row[j]
    pairs = [(u, tokens[j]) for u in range(40) for j in rng.choice(n_items, 5, replace=False)]

    def write_variant(name, rename, shuffle):
        folder = tmp_path / "data" / name
        variant_pairs = [(u, rename[t]) for u, t in pairs]
        if shuffle:
            variant_pairs = [variant_pairs[k] for k in rng.permutation(len(variant_pairs))]
        write_atomic(folder, name, variant_pairs)
        features = np.zeros_like(raw)
        id_map = [""] * n_items
        for j, token in enumerate(tokens):
            features[feature_row[j]] = raw[j]
            id_map[feature_row[j]] = rename[token]
        np.save(folder / "text.npy", features)
        (folder / "items.txt").write_text("\n".join(id_map) + "\n")

    permutation = rng.permutation(n_items)
    write_variant("plain", {t: t for t in tokens}, shuffle=False)
    write_variant("permuted", {t: tokens[permutation[j]] for j, t in enumerate(tokens)}, shuffle=True)
    settings = dict(modality_files={"text": "text.npy"}, feature_id_map="items.txt")
    plain = load(tmp_path, "plain", run_config, **settings)
    permuted = load(tmp_path, "permuted", run_config, **settings)

    moved = 0
    for j, token in enumerate(tokens):
        id_plain = plain.token2id("item_id", token)
        id_permuted = permuted.token2id("item_id", tokens[permutation[j]])
        moved += id_plain != id_permuted
        assert torch.equal(plain.modality_features["text"][id_plain], torch.from_numpy(raw[j]))
        assert torch.equal(permuted.modality_features["text"][id_permuted], torch.from_numpy(raw[j]))
    assert moved > n_items // 2, "the permutation should change most internal ids"
    assert torch.all(plain.modality_features["text"][0] == 0), "row 0 is RecBole's padding item"


def write_mmrec(folder, name, rows, n_feature_rows, dim=4):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{x}" for u, i, x in rows]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    features = np.repeat(np.arange(n_feature_rows, dtype=np.float32)[:, None], dim, axis=1)
    np.save(folder / "text_feat.npy", features)
    np.save(folder / "image_feat.npy", features * 10)


MMREC_ROWS = (
    [(u, i, 0) for u in range(6) for i in range(u, u + 4)]
    + [(u, u + 4, 1) for u in range(6)]
    + [(u, (u + 5) % 9, 2) for u in range(6)]
    + [(7, 1, 1), (7, 2, 2)]   # user 7 has no training rows: MMRec drops it
)
MMREC_SETTINGS = dict(modality_files={"text": "text_feat.npy", "image": "image_feat.npy"})


def folder_digest(folder):
    return {name: hashlib.sha1((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


def test_mmrec_folder_is_a_fixed_split(tmp_path, run_config):
    folder = tmp_path / "data" / "mini"
    write_mmrec(folder, "mini", MMREC_ROWS, n_feature_rows=10)
    before = folder_digest(folder)
    dataset = load(tmp_path, "mini", run_config, **MMREC_SETTINGS)
    train, valid, test = dataset.build()
    assert (len(train), len(valid), len(test)) == (24, 6, 6)
    assert "7" not in dataset.field2token_id["user_id"], "valid/test-only users are dropped"
    for split, label in ((train, 0), (valid, 1), (test, 2)):
        users = dataset.id2token("user_id", split.inter_feat["user_id"].numpy())
        items = dataset.id2token("item_id", split.inter_feat["item_id"].numpy())
        expected = sorted((str(u), str(i)) for u, i, x in MMREC_ROWS if x == label and u != 7)
        assert sorted(zip(users, items)) == expected
    for item_id in range(1, dataset.item_num):
        token = int(dataset.id2token("item_id", item_id))
        assert torch.all(dataset.modality_features["text"][item_id] == token)
        assert torch.all(dataset.modality_features["image"][item_id] == 10 * token)
    assert folder_digest(folder) == before, "the user's files are never modified or added to"


def test_mmrec_folder_feeds_recbole_loaders(tmp_path, run_config):
    write_mmrec(tmp_path / "data" / "mini", "mini", MMREC_ROWS, n_feature_rows=10)
    config = Config("VBPR", "mini", config_dict=run_config(
        data_path=str(tmp_path / "data"), synthetic_generator=None, **MMREC_SETTINGS))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    assert train._dataset.inter_num == 24
    assert valid._dataset.inter_num == 6 and test._dataset.inter_num == 6


def test_bad_x_label_names_the_file(tmp_path, run_config):
    write_mmrec(tmp_path / "data" / "badlabel", "badlabel", MMREC_ROWS + [(1, 1, 5)], n_feature_rows=10)
    with pytest.raises(ValueError, match=r"badlabel\.inter: x_label must be 0"):
        load(tmp_path, "badlabel", run_config, **MMREC_SETTINGS)


def test_missing_dataset_says_what_to_put_where(tmp_path, run_config):
    with pytest.raises(DatasetNotFoundError) as error:
        load(tmp_path, "baby", run_config)
    message = str(error.value)
    for expected in ("baby.inter", "image_feat.npy", "text_feat.npy", "4096", os.path.join("data", "baby"), "x_label"):
        assert expected in message


def _mini_folder(tmp_path, n_feature_rows=10):
    folder = tmp_path / "data" / "mini"
    write_mmrec(folder, "mini", MMREC_ROWS, n_feature_rows=n_feature_rows)
    return folder


def test_missing_feature_file(tmp_path, run_config):
    _mini_folder(tmp_path)
    with pytest.raises(FeatureFileError, match=r"'audio'.*audio_feat\.npy not found"):
        load(tmp_path, "mini", run_config, modality_files={"audio": "audio_feat.npy"})


def test_item_without_feature_row(tmp_path, run_config):
    _mini_folder(tmp_path, n_feature_rows=5)   # items 5..8 occur in the interactions
    with pytest.raises(FeatureFileError, match=r"text_feat\.npy: \d+ items .* no feature row"):
        load(tmp_path, "mini", run_config, modality_files={"text": "text_feat.npy"})


def test_id_map_with_wrong_row_count(tmp_path, run_config):
    folder = _mini_folder(tmp_path)
    (folder / "ids.txt").write_text("\n".join(str(i) for i in range(12)) + "\n")
    with pytest.raises(FeatureFileError, match=r"text_feat\.npy: the id map lists 12 items but the feature file has 10 rows"):
        load(tmp_path, "mini", run_config, modality_files={"text": "text_feat.npy"}, feature_id_map="ids.txt")


def test_modalities_with_different_row_counts(tmp_path, run_config):
    folder = _mini_folder(tmp_path)
    np.save(folder / "image_feat.npy", np.ones((12, 4), dtype=np.float32))
    with pytest.raises(FeatureFileError, match="disagree on the number of items"):
        load(tmp_path, "mini", run_config, **MMREC_SETTINGS)


def test_nan_values(tmp_path, run_config):
    folder = _mini_folder(tmp_path)
    features = np.ones((10, 4), dtype=np.float32)
    features[3, 2] = np.nan
    features[6, 0] = np.inf
    np.save(folder / "text_feat.npy", features)
    with pytest.raises(FeatureFileError, match=r"text_feat\.npy contains 2 NaN/Inf values \(first in row 3\)"):
        load(tmp_path, "mini", run_config, modality_files={"text": "text_feat.npy"})


def test_not_two_dimensional(tmp_path, run_config):
    folder = _mini_folder(tmp_path)
    np.save(folder / "text_feat.npy", np.ones(10, dtype=np.float32))
    with pytest.raises(FeatureFileError, match=r"text_feat\.npy has shape \(10,\); expected a 2-D array"):
        load(tmp_path, "mini", run_config, modality_files={"text": "text_feat.npy"})


def test_dimension_differs_from_config(tmp_path, run_config):
    _mini_folder(tmp_path)
    with pytest.raises(FeatureFileError, match=r"text_feat\.npy has 4 dimensions but the dataset config says 384"):
        load(tmp_path, "mini", run_config, modality_files={"text": "text_feat.npy"}, modality_dims={"text": 384})


def test_align_rows_gathers_in_file_order_blocks_and_keeps_the_item_order(tmp_path):
    """Blocks of the mapped file (here 7 rows each), rows in any order, blocks without a wanted
    row skipped: the same rows as a plain gather, behind the zero padding row."""
    from recbole_mm.data.modality import align_rows, load_matrix

    values = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    np.save(tmp_path / "f.npy", values)
    matrix = load_matrix(str(tmp_path / "f.npy"), "image")
    rows = np.array([44, 3, 17, 0, 30, 31, 49, 8])  # rows 21-27 (one whole block) unused
    aligned = align_rows(matrix, rows, budget_bytes=7 * 3 * 4)
    assert aligned.dtype == np.float32 and aligned.shape == (9, 3)
    assert not aligned[0].any()
    np.testing.assert_array_equal(aligned[1:], values[rows])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_loading_a_feature_file_peaks_near_one_copy_of_it(tmp_path):
    """The float32 copy is what stays; the mapped file's pages and a gathered temporary must not
    add to the peak (they did: about three copies of the table at the peak). A 128 MB table,
    gathered in a shuffled order, in a fresh process: its peak grows by less than 1.4 copies."""
    np.save(tmp_path / "image_feat.npy", np.ones((32768, 1024), dtype=np.float32))
    script = (
        "import numpy as np, sys\n"
        "from recbole_mm.data.modality import align_rows, load_matrix\n"
        "def peak():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024\n"
        "before = peak()\n"
        f"matrix = load_matrix({str(tmp_path / 'image_feat.npy')!r}, 'image')\n"
        "aligned = align_rows(matrix, np.random.default_rng(0).permutation(32768), budget_bytes=2 ** 23)\n"
        "print(peak() - before, aligned.nbytes)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)
    grown, table = map(int, done.stdout.split())
    assert table <= grown < 1.4 * table, (grown / table, done.stderr[-500:])
