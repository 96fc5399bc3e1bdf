"""The bundled synthetic dataset: deterministic, planted structure, never overwrites user data."""
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest

from recbole_mm.data.synthetic import ensure_synthetic_dataset, generate_synthetic

SMALL = {"seed": 3, "n_users": 400, "n_items": 300, "mean_interactions": 12}


def digest(folder):
    return {n: hashlib.sha1(open(os.path.join(folder, n), "rb").read()).hexdigest() for n in sorted(os.listdir(folder))}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    generate_synthetic(str(tmp_path / "a"), "synthetic", SMALL)
    generate_synthetic(str(tmp_path / "b"), "synthetic", SMALL)
    generate_synthetic(str(tmp_path / "c"), "synthetic", {**SMALL, "seed": 4})
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["synthetic.inter"] != digest(tmp_path / "c")["synthetic.inter"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("gen") / "synthetic")
    generate_synthetic(folder, "synthetic", SMALL)
    inter = pd.read_csv(os.path.join(folder, "synthetic.inter"), sep="\t")
    factors = np.load(os.path.join(folder, "planted_factors.npz"))
    features = {m: np.load(os.path.join(folder, f"{m}_feat.npy")) for m in ("text", "image")}
    return folder, inter, factors, features


def test_mmrec_layout_and_split(generated):
    _, inter, _, _ = generated
    assert list(inter.columns) == ["userID", "itemID", "x_label"]
    assert not inter.duplicated(["userID", "itemID"]).any()
    per_user = inter.groupby("userID")["x_label"].agg(lambda x: tuple(np.bincount(x, minlength=3)))
    assert all(valid >= 1 and test >= 1 and train >= 3 for train, valid, test in per_user)
    shares = np.bincount(inter["x_label"]) / len(inter)
    assert 0.75 < shares[0] < 0.9 and abs(shares[1] - shares[2]) < 0.01


def test_popularity_is_skewed(generated):
    _, inter, factors, _ = generated
    counts = np.bincount(inter["itemID"], minlength=SMALL["n_items"])
    top_decile = np.sort(counts)[::-1][: SMALL["n_items"] // 10].sum() / counts.sum()
    assert top_decile > 0.25, "the top 10% of items should hold well over 10% of interactions"
    assert np.corrcoef(factors["popularity"], counts)[0, 1] > 0.5


def test_interactions_follow_the_planted_preferences(generated):
    _, inter, factors, _ = generated
    affinity = factors["user_factors"] @ factors["item_factors"].T
    chosen = affinity[inter["userID"], inter["itemID"]].mean()
    assert chosen > affinity.mean() + 1.0


def explained_variance(features, targets):
    design = np.c_[features, np.ones(len(features))]
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    residual = targets - design @ coef
    return 1 - residual.var() / targets.var()


def test_text_is_more_informative_than_image(generated):
    _, _, factors, features = generated
    r2_text = explained_variance(features["text"], factors["item_factors"])
    r2_image = explained_variance(features["image"], factors["item_factors"])
    assert r2_text > r2_image > 0.1
    assert r2_text > 0.5


def test_user_folder_without_meta_is_never_overwritten(tmp_path):
    folder = tmp_path / "synthetic"
    folder.mkdir()
    (folder / "synthetic.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    assert not ensure_synthetic_dataset(str(folder), "synthetic", SMALL)
    assert (folder / "synthetic.inter").read_text() == "userID\titemID\tx_label\n0\t0\t0\n"


def test_regenerated_only_when_arguments_change(tmp_path):
    folder = str(tmp_path / "synthetic")
    assert ensure_synthetic_dataset(folder, "synthetic", SMALL)
    assert not ensure_synthetic_dataset(folder, "synthetic", SMALL)
    assert ensure_synthetic_dataset(folder, "synthetic", {**SMALL, "n_users": 401})
    meta = json.load(open(os.path.join(folder, "synthetic_meta.json")))
    assert meta["arguments"]["n_users"] == 401


def test_unknown_argument_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown argument 'n_user'"):
        generate_synthetic(str(tmp_path / "x"), "synthetic", {"n_user": 3})
