"""Config values are checked up front (type and range, naming the key) and unknown keys are
warned about with the closest known one."""
import glob
import logging
import os
import re
import sys

import pytest

from recbole_mm.config import Config, check_values, known_keys, value_checks
from recbole_mm.errors import ConfigError
from recbole_mm.utils import available_models
from tests.conftest import REPO_ROOT


def config(run_config, model="VBPR", dataset="synthetic", files=None, **overrides):
    return Config(model, dataset, files, run_config(**overrides))


@pytest.mark.parametrize("key, value, model, wanted", [
    ("embedding_size", 0, "VBPR", "an integer >= 1"),
    ("learning_rate", -0.01, "VBPR", "a number > 0"),
    ("learning_rate", 0, "BPR", "a number > 0"),          # RecBole's own models too
    ("epochs", -1, "VBPR", "an integer >= 0"),
    ("knn_k", "abc", "FREEDOM", "an integer >= 1"),
    ("knn_k", 2.5, "LATTICE", "an integer >= 1"),
    ("noise_ratio", 1.5, "VBPR", "a number in [0, 1)"),
    ("dropout", 1.0, "FREEDOM", "a number in [0, 1)"),
    ("dct_mode", "3d", "LIRDRec", "one of ['1d', '2d', 'none']"),
    ("fusion", "sum", "VLIF", "one of ['pid', 'synergy', 'weighted', 'concat', 'pooling']"),
    ("guider_kd", "mse", "VBPR", "one of ['ot', 'matched', 'ot_pairs', 'kl', 'none']"),
    ("use_pwc", "maybe", "LIRDRec", "True or False"),
    ("learning_rate", None, "VBPR", "a number > 0"),
])
def test_bad_values_are_a_config_error_naming_the_key(run_config, key, value, model, wanted):
    with pytest.raises(ConfigError) as error:
        config(run_config, model, **{key: value})
    assert str(error.value) == f"{key} must be {wanted}, got " + ("nothing (~)" if value is None else repr(value))


def test_command_line_strings_are_converted_or_refused_by_name(run_config, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run", "--modalities=text", "--knn_k=5", "--use_pwc=false",
                                      "--guider_modalities=[text,image]"])
    values = config(run_config, "LIRDRec")
    assert values["modalities"] == ["text"], "one name, not its letters"
    assert values["knn_k"] == 5 and values["use_pwc"] is False
    assert values["guider_modalities"] == ["text", "image"]
    monkeypatch.setattr(sys, "argv", ["run", "--modalities=text,image"])
    assert config(run_config, "VBPR")["modalities"] == ["text", "image"]
    monkeypatch.setattr(sys, "argv", ["run", "--guider_kd_retry=~"])  # yaml's None, as a yaml file writes it
    assert config(run_config, "VBPR")["guider_kd_retry"] is None


def test_modalities_must_be_in_the_dataset(run_config):
    with pytest.raises(ConfigError, match=r"VBPR needs modalities \['audio'\] \(config key modalities: "
                                          r"\['text', 'audio'\]\); dataset 'synthetic' lacks \['audio'\]"):
        config(run_config, modalities=["text", "audio"])
    assert config(run_config, "BPR", modalities=["audio"])["modalities"] == ["audio"], "RecBole models read no features"


def test_recbole_models_keep_their_own_meaning_of_shared_names(run_config):
    """The model table (knn_k, n_layers, reg_weight...) applies to the plugin's models only."""
    assert config(run_config, "ItemKNN", knn_k="anything")["knn_k"] == "anything"
    with pytest.raises(ConfigError, match="knn_k"):
        config(run_config, "VBPR", knn_k="anything")


def test_every_packaged_default_passes_its_checks(run_config):
    for model in available_models(plugin=True):
        values = config(run_config, model)
        assert values["embedding_size"] >= 1, model


def test_a_misspelt_key_is_warned_about_with_the_closest_key(run_config, caplog):
    with caplog.at_level(logging.WARNING):
        config(run_config, learnig_rate=0.1, knn_k=5)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "'learnig_rate' (from the config_dict)" in warnings[0] and "did you mean 'learning_rate'?" in warnings[0]


def test_shipped_experiment_files_use_known_keys_only(run_config, caplog):
    with caplog.at_level(logging.WARNING):
        for path in sorted(glob.glob(os.path.join(REPO_ROOT, "properties", "*.yaml"))):
            config(run_config, "VBPR", files=[path])
    assert not [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()]


def test_every_key_the_code_reads_is_known():
    """A key read as ``config["key"]`` somewhere in recbole_mm is never reported as unknown."""
    read = set()
    for path in glob.glob(os.path.join(REPO_ROOT, "recbole_mm", "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as handle:
            read |= set(re.findall(r'config\[\s*["\'](\w+)["\']\s*\]', handle.read()))
    assert read - known_keys() == set()
    tables = value_checks()
    checked = set(tables["recbole"]) | set(tables["plugin"]) | set(tables["model"])
    assert checked <= known_keys(), "a checked key that no yaml knows is a typo in the table"


def test_check_values_normalises_in_place():
    values = {"epochs": "3", "learning_rate": "1e-3", "topk": 10, "guider": "True", "modalities": None,
              "guider_kd_retry": "null", "guider_kd_balance": "none"}
    check_values(values)
    assert values == {"epochs": 3, "learning_rate": 0.001, "topk": [10], "guider": True, "modalities": None,
                      "guider_kd_retry": None, "guider_kd_balance": "none"}  # "none" is a choice, not nothing
    with pytest.raises(ConfigError, match=r"^learning_rate must be a number > 0, got nothing \(~\)$"):
        check_values({"learning_rate": "~"})


def test_printed_split_is_the_split_the_data_gets(run_config, tmp_path):
    assert config(run_config)["eval_args"]["split"] == {"x_label": "fixed: 0/1/2 = train/valid/test"}
    cold = config(run_config, cold_start_items=[0.1, 0.1])
    assert cold["eval_args"]["split"] == {"cold_start_items": [0.1, 0.1]}
    atomic = tmp_path / "atomic"
    atomic.mkdir()
    (atomic / "atomic.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    values = config(run_config, "BPR", "atomic", data_path=str(tmp_path), synthetic_generator=None)
    assert values["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]}, "RecBole's own split where it applies"


def test_progress_bars_only_on_a_terminal(run_config, monkeypatch):
    assert config(run_config, show_progress=None)["show_progress"] is False, "pytest captures the output"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert config(run_config, show_progress=None)["show_progress"] is True
    assert config(run_config, show_progress=False)["show_progress"] is False, "an explicit choice wins"


def test_values_are_checked_before_recbole_setup_reads_them(run_config):
    """``wbpr_alpha`` is read while the negative sampling is set up, inside RecBole's __init__."""
    with pytest.raises(ConfigError, match=r"^wbpr_alpha must be a number >= 0, got 'abc'$"):
        config(run_config, denoise="wbpr", wbpr_alpha="abc")
