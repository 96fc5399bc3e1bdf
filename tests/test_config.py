"""Config precedence, model lookup and trainer choice."""
import sys

import pytest
from recbole.model.general_recommender.bpr import BPR

from recbole_mm.config import Config
from recbole_mm.model.vbpr import VBPR
from recbole_mm.trainer import MultiModalTrainer, get_trainer
from recbole_mm.utils import available_models, get_model


def test_plugin_models_first_then_recbole():
    assert get_model("VBPR") is VBPR
    assert get_model("BPR") is BPR
    assert "VBPR" in available_models(plugin=True)
    assert "lightgcn" in available_models(plugin=False)


def test_unknown_model_lists_available_models_without_lightgbm_noise():
    with pytest.raises(ValueError) as error:
        get_model("NoSuchModel")
    message = str(error.value)
    assert "Unknown model 'NoSuchModel'" in message and "VBPR" in message and "lightgcn" in message
    assert "lightgbm" not in message.lower() and "xgboost" not in message.lower()


def test_packaged_defaults_follow_the_mmrec_protocol(run_config):
    config = Config("VBPR", "synthetic", config_dict=run_config())
    assert config["embedding_size"] == 64 and config["train_batch_size"] == 2048
    assert config["learning_rate"] == 0.001 and config["learner"] == "adam"
    assert config["stopping_step"] == 10, "synthetic.yaml shortens the packaged stopping_step of 20"
    assert config["valid_metric"] == "Recall@20"
    assert config["topk"] == [5, 10, 20, 50]
    assert [m.lower() for m in config["metrics"]] == ["recall", "ndcg", "precision", "map", "hit", "gauc"]
    assert config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["train_neg_sample_args"]["sample_num"] == 1
    assert config["train_neg_sample_args"]["distribution"] == "uniform"
    assert config["reg_weight"] == 0.001, "from properties/model/VBPR.yaml"
    assert config["modality_files"] == {"text": "text_feat.npy", "image": "image_feat.npy", "clip": "clip_feat.npy"}
    assert config["modalities"] == ["text", "image"], "VBPR.yaml: MMRec's text-then-image features"


def test_precedence_overall_model_dataset_file_dict_cmdline(tmp_path, monkeypatch, run_config):
    base = run_config()
    base.pop("epochs")
    assert Config("VBPR", "baby", config_dict=base)["epochs"] == 1000, "overall.yaml"
    assert Config("VBPR", "synthetic", config_dict=base)["epochs"] == 60, "dataset yaml beats overall"
    user_file = tmp_path / "mine.yaml"
    user_file.write_text("epochs: 7\nreg_weight: 0.5\nlearning_rate: 0.01\n")
    from_file = Config("VBPR", "synthetic", [str(user_file)], base)
    assert (from_file["epochs"], from_file["reg_weight"]) == (7, 0.5), "user file beats packaged yaml"
    from_dict = Config("VBPR", "synthetic", [str(user_file)], {**base, "epochs": 9})
    assert from_dict["epochs"] == 9 and from_dict["learning_rate"] == 0.01, "dict beats file"
    monkeypatch.setattr(sys, "argv", ["run", "--epochs=11"])
    assert Config("VBPR", "synthetic", [str(user_file)], {**base, "epochs": 9})["epochs"] == 11


def test_general_models_get_the_multimodal_trainer(run_config):
    config = Config("BPR", "synthetic", config_dict=run_config())
    assert get_trainer(config["MODEL_TYPE"], "BPR") is MultiModalTrainer
    assert get_trainer(config["MODEL_TYPE"], "VBPR") is MultiModalTrainer


def test_dataset_defaults_block_of_a_model_yaml(tmp_path, monkeypatch, run_config):
    """model yaml < dataset yaml < the model yaml's dataset_defaults entry for the dataset <
    user file < dict < command line."""
    import recbole_mm.config as config_module
    from recbole_mm.errors import ConfigError

    model_yaml = tmp_path / "VBPR.yaml"
    model_yaml.write_text("reg_weight: 0.5\nepochs: 3\ndataset_defaults:\n"
                          "  synthetic: {reg_weight: 0.25, epochs: 5}\n  baby: {reg_weight: 0.125}\n")
    monkeypatch.setattr(config_module, "model_config_file", lambda model_class: str(model_yaml))
    base = run_config()
    base.pop("epochs")
    tuned = Config("VBPR", "synthetic", config_dict=base)
    assert (tuned["reg_weight"], tuned["epochs"]) == (0.25, 5), "the entry beats the model and dataset yaml"
    assert "dataset_defaults" not in tuned.final_config_dict
    baby = Config("VBPR", "baby", config_dict=base)
    assert (baby["reg_weight"], baby["epochs"]) == (0.125, 3), "keys the entry leaves out keep the model's value"
    assert Config("VBPR", "sports", config_dict=base)["reg_weight"] == 0.5, "no entry: the model yaml"
    user_file = tmp_path / "mine.yaml"
    user_file.write_text("reg_weight: 0.75\n")
    assert Config("VBPR", "synthetic", [str(user_file)], base)["reg_weight"] == 0.75
    assert Config("VBPR", "synthetic", config_dict={**base, "epochs": 9})["epochs"] == 9
    monkeypatch.setattr(sys, "argv", ["run", "--reg_weight=0.0625"])
    assert Config("VBPR", "synthetic", config_dict=base)["reg_weight"] == 0.0625
    model_yaml.write_text("dataset_defaults:\n  synthetic: 3\n")
    with pytest.raises(ConfigError, match="dataset_defaults must map dataset names"):
        Config("VBPR", "synthetic", config_dict=base)
