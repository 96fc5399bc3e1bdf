"""MMRec interaction files: malformed ones are named with the layout expected; a custom-named
MMRec folder runs with no yaml (its ``*_feat.npy`` files are found)."""
import numpy as np
import pytest

from recbole_mm.config import Config
from recbole_mm.data import create_dataset
from recbole_mm.data.mmrec_format import feature_files, inter_layout, write_mmrec_inter
from recbole_mm.errors import DataError
from recbole_mm.quick_start import run_recbole_mm

GOOD = "userID\titemID\tx_label\n0\t1\t0\n"


@pytest.mark.parametrize("content, expected", [
    ("", r"is empty"),
    ("\n0\t1\t0\n", r"is empty or starts with a blank line"),
    ("0\t1\t0\n1\t2\t0\n", r"the first line '0\\t1\\t0' is data, not a header"),
    ("userID\titemID\n0\t1\n", r"lacks the MMRec column\(s\) \['x_label'\]"),
    ("userID,itemID,x_label\n0,1,0\n", r"separated by ',', not tab-separated"),
    ("userID itemID x_label\n0 1 0\n", r"separated by ' ', not tab-separated"),
    ("userID\titemID\tx_label\n", r"has a header but no interaction rows"),
    ("user_id:token\titem_id\n0\t1\n", r"columns \['item_id'\] have no RecBole type"),
])
def test_malformed_inter_is_one_line_naming_the_file(tmp_path, run_config, content, expected):
    folder = tmp_path / "data" / "bad"
    folder.mkdir(parents=True)
    (folder / "bad.inter").write_text(content)
    with pytest.raises(DataError, match=expected) as error:
        create_dataset(Config("BPR", "bad", config_dict=run_config(data_path=str(tmp_path / "data"),
                                                                   synthetic_generator=None)))
    message = str(error.value)
    assert str(folder / "bad.inter") in message and "\n" not in message
    assert "not enough values" not in message


def test_well_formed_headers_give_their_layout(tmp_path):
    (tmp_path / "a.inter").write_text(GOOD)
    (tmp_path / "b.inter").write_text("user_id:token\titem_id:token\n0\t1\n")
    assert inter_layout(tmp_path / "a.inter") == "mmrec" and inter_layout(tmp_path / "b.inter") == "atomic"


def write_custom_folder(folder, rng, n_users=40, n_items=60):
    folder.mkdir(parents=True)
    users = np.repeat(np.arange(n_users), 6)
    items = np.concatenate([rng.choice(n_items, 6, replace=False) for _ in range(n_users)])
    labels = np.tile([0, 0, 0, 0, 1, 2], n_users)
    write_mmrec_inter(str(folder / "mydata.inter"), users, items, labels)
    np.save(folder / "image_feat.npy", rng.standard_normal((n_items, 8)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.standard_normal((n_items, 5)).astype(np.float32))
    np.save(folder / "notes.npy", np.zeros(3))                 # not a *_feat.npy file: ignored


def test_custom_mmrec_folder_trains_vbpr_without_a_yaml(tmp_path, run_config):
    write_custom_folder(tmp_path / "data" / "mydata", np.random.default_rng(0))
    config_dict = run_config(data_path=str(tmp_path / "data"), synthetic_generator=None, epochs=1)
    assert Config("VBPR", "mydata", config_dict=config_dict)["modality_files"] is None
    result = run_recbole_mm("VBPR", "mydata", config_dict=config_dict, saved=False)
    model = result["trainer"].model
    assert list(model.modality_features) == ["text", "image"]        # MMRec's order
    assert model.item_raw_features.shape[1] == 5 + 8
    assert np.isfinite(result["test_result"]["recall@20"])


def test_named_modality_files_win_over_detection(tmp_path, run_config):
    write_custom_folder(tmp_path / "data" / "mydata", np.random.default_rng(0))
    dataset = create_dataset(Config("VBPR", "mydata", config_dict=run_config(
        data_path=str(tmp_path / "data"), synthetic_generator=None, modality_files={"image": "image_feat.npy"}, modalities=["image"])))
    assert list(dataset.modality_features) == ["image"]
    none = create_dataset(Config("BPR", "mydata", config_dict=run_config(
        data_path=str(tmp_path / "data"), synthetic_generator=None, modality_files={})))
    assert none.modality_features == {}


def test_feature_files_are_named_after_their_stem(tmp_path):
    for name in ("image_feat.npy", "text_feat.npy", "audio_feat.npy", "_feat.npy", "image_feat_vlm.npy", "x.npy"):
        np.save(tmp_path / name, np.zeros((2, 2)))
    assert feature_files(tmp_path) == {"text": "text_feat.npy", "image": "image_feat.npy",
                                       "audio": "audio_feat.npy"}
