"""Models whose MMRec reference runs with whichever of the image/text features exist train on a
text-only and an image-only dataset; the others say clearly that they need both (MGCN: MMRec's
forward uses both unconditionally)."""
import pytest
import torch
from recbole.utils import init_seed

from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
from recbole_mm.errors import ConfigError
from recbole_mm.utils import get_model

ONE_MODALITY_MODELS = ["FREEDOM", "BM3", "LATTICE", "VBPR", "GRCN", "MMGCN", "DRAGON"]
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
    dataset_name = f"only_{modality}"
    config = Config(model_name, dataset_name, None, one_modality_config(data_root, tmp_path, modality))
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


@pytest.mark.parametrize("model_name", ["MICRO", "VLIF", "MGCN"])
def test_models_whose_reference_needs_both_say_so(data_root, tmp_path, model_name):
    """MICRO and VLIF subclass opted-in models but need both; MMRec's MGCN gates both in forward."""
    with pytest.raises(ConfigError, match=f"{model_name} needs modalities \\['image'\\]"):
        Config(model_name, "only_text", None, one_modality_config(data_root, tmp_path, "text"))
