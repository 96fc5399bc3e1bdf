"""Models whose reference runs with whichever of the image/text features exist train on a
text-only and an image-only dataset (SLMRec: MMRec's one-modality kwai branch; LIRDRec: the
paper's w/o-visual / w/o-textual ablations); the others say clearly that they need both, and why
(their references stop on a one-modality folder: ``benchmarks/compare_reference.py --modalities
text``), and NF-VLM / CLIPMLP that they need the CLIP embedding."""
import pytest
import torch
from recbole.utils import init_seed

from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
from recbole_mm.errors import ConfigError
from recbole_mm.utils import get_model

ONE_MODALITY_MODELS = ["FREEDOM", "BM3", "LATTICE", "VBPR", "GRCN", "MMGCN", "DRAGON", "DualGNN", "SLMRec", "LIRDRec",
                       "MMGCF"]
# model -> words of the reason its error gives
NEEDS_BOTH = {"MGCN": "UnboundLocalError", "LGMRec": "hypergraph views", "MICRO": "CRIPAC-DIG/MICRO",
              "MENTOR": "Jinfeng-Xu/MENTOR", "COHESION": "Jinfeng-Xu/COHESION", "VLIF": "synergy",
              "DAMRS": "AttributeError", "MVGAE": "AttributeError"}
NEEDS_CLIP = ["NFVLM", "CLIPMLP"]
TINY = {"seed": 5, "n_users": 120, "n_items": 80, "mean_interactions": 10}


def one_modality_config(data_root, tmp_path, modality):
    other = {"text": "image", "image": "text"}[modality]
    return {"data_path": data_root, "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING",
            "show_progress": False, "cache_dir": "~",
            "synthetic_generator": {**TINY, "modalities": {other: None, "clip": None}},
            "modality_files": {modality: f"{modality}_feat.npy"}, "modality_dims": {},
            "train_batch_size": 512, "embedding_size": 16}


@pytest.mark.parametrize("modality", ["text", "image"])
@pytest.mark.parametrize("model_name", ONE_MODALITY_MODELS)
def test_trains_on_one_modality(data_root, tmp_path, model_name, modality):
    one_training_step(model_name, modality, one_modality_config(data_root, tmp_path, modality))


@pytest.mark.parametrize("model_name", ["LGMRec", "MGCN", "MICRO", "MVGAE"] + NEEDS_CLIP)
def test_a_given_single_modality_runs_this_ports_variant(data_root, tmp_path, model_name):
    """What the refusals above offer: ``modalities: [text]`` given runs (no reference counterpart)."""
    config = {**one_modality_config(data_root, tmp_path, "text"), "modalities": ["text"]}
    one_training_step(model_name, "text", config)


def one_training_step(model_name, modality, config_dict):
    config = Config(model_name, f"only_{modality}", None, config_dict)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    model = get_model(model_name)(config, train._dataset).to(config["device"])
    assert list(model.modality_features) == [modality]
    model.train()
    if hasattr(model, "pre_epoch_processing"):
        model.pre_epoch_processing()
    batch = next(iter(train))
    loss = model.calculate_loss(batch.to(config["device"]))
    loss = sum(loss) if isinstance(loss, tuple) else loss
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch.to(config["device"]))
    assert torch.isfinite(scores).all()


def test_without_either_modality_the_error_says_so(data_root, tmp_path):
    config = one_modality_config(data_root, tmp_path, "text")
    config["modalities"] = ["image", "clip"]  # none of them in the dataset
    with pytest.raises(ConfigError, match="FREEDOM needs modalities \\['image', 'clip'\\]"):
        Config("FREEDOM", "only_text", None, config)


def test_modalities_the_user_names_must_all_exist(data_root, tmp_path):
    config = one_modality_config(data_root, tmp_path, "text")
    config["modalities"] = ["image", "text"]  # given, not the packaged default: not left out silently
    with pytest.raises(ConfigError, match="FREEDOM needs modalities \\['image'\\]"):
        Config("FREEDOM", "only_text", None, config)


@pytest.mark.parametrize("modality", ["text", "image"])
@pytest.mark.parametrize("model_name", sorted(NEEDS_BOTH))
def test_models_whose_reference_needs_both_say_so(data_root, tmp_path, model_name, modality):
    other = {"text": "image", "image": "text"}[modality]
    with pytest.raises(ConfigError, match=f"{model_name} needs modalities \\['{other}'\\].*"
                                          f"{model_name} cannot leave a modality out: .*{NEEDS_BOTH[model_name]}"):
        Config(model_name, f"only_{modality}", None, one_modality_config(data_root, tmp_path, modality))


@pytest.mark.parametrize("model_name", ["MENTOR", "COHESION", "VLIF", "DAMRS"])
def test_models_without_a_one_modality_variant_refuse_a_given_one(data_root, tmp_path, model_name):
    """Where no one-modality variant exists here either, ``modalities: [text]`` given is refused too."""
    config = Config(model_name, "only_text", None, {**one_modality_config(data_root, tmp_path, "text"),
                                                    "modalities": ["text"]})
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    with pytest.raises(ConfigError, match=f"needs 'image' and 'text'.*{model_name} cannot leave a modality out"):
        get_model(model_name)(config, train._dataset)


@pytest.mark.parametrize("model_name", NEEDS_CLIP)
def test_clip_models_name_the_clip_embedding(data_root, tmp_path, model_name):
    with pytest.raises(ConfigError, match=f"{model_name} needs modalities \\['clip'\\].*CLIP joint image-text"):
        Config(model_name, "only_text", None, one_modality_config(data_root, tmp_path, "text"))
