"""The plugin's error types and the wording of its data and modality messages."""
import logging
import os
import re
import types

import numpy as np
import pandas as pd
import pytest
import torch

from recbole_mm.data import DatasetNotFoundError, FeatureFileError
from recbole_mm.data.dataset import read_mmrec_inter
from recbole_mm.data.modality import read_id_map, rows_for_tokens
from recbole_mm.data.noise import checked_ratio
from recbole_mm.errors import ConfigError, DataError, RecboleMMError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.quick_start import plain_result
from recbole_mm.trainer.guider import GUIDERTrainer
from recbole_mm.trainer.guider_ops import transform_rows
from recbole_mm.utils import UnknownModelError, get_model
from tests.conftest import REPO_ROOT


def test_error_types_are_recbole_mm_errors_and_still_value_errors():
    for error in (ConfigError, DataError, UnknownModelError, FeatureFileError, DatasetNotFoundError):
        assert issubclass(error, RecboleMMError) and issubclass(error, ValueError), error
    assert issubclass(UnknownModelError, ConfigError)
    assert issubclass(FeatureFileError, DataError) and issubclass(DatasetNotFoundError, DataError)
    assert issubclass(DatasetNotFoundError, FileNotFoundError), "callers catching FileNotFoundError keep working"


def test_config_and_data_mistakes_raise_the_project_errors(tmp_path):
    with pytest.raises(ConfigError, match="noise_ratio"):
        checked_ratio(1.5)
    with pytest.raises(ConfigError, match="Unknown model 'NoSuchModel'"):
        get_model("NoSuchModel")
    with pytest.raises(ConfigError, match="guider_kd_transform"):
        transform_rows(torch.zeros(2, 3), "nope")
    path = tmp_path / "bad.inter"
    pd.DataFrame({"userID": [0, 1], "itemID": [0, 1], "x_label": [0, 7]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(DataError, match=r"x_label must be 0 \(train\), 1 \(valid\) or 2 \(test\); found \[7\]"):
        read_mmrec_inter(str(path))


# raises of plain ValueError that stay: programming errors inside the library, not user input
INTERNAL_VALUE_ERRORS = {
    "model/layers.py": 2,        # combine mode / MLP sizes, chosen by the model code
    "data/graphs.py": 1,         # learned_item_graph without mixing weights
    "trainer/bod.py": 1,         # weights of another batch (a trainer bug)
    "data/synthetic.py": 1,      # modality_features given a wrong `out` array (a caller bug)
    "hyper.py": 2,               # caught on the spot and re-raised as HyperFileError with file:line
}


def test_no_plain_value_error_for_user_input_in_the_training_path():
    """Every ``raise ValueError`` of the library (the offline ``features`` tools aside) is a
    ConfigError or DataError, so the command line can print it as one line."""
    root = os.path.join(REPO_ROOT, "recbole_mm")
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if not name.endswith(".py") or relative.startswith("features/"):
                continue
            with open(path, encoding="utf-8") as handle:
                count = len(re.findall(r"raise ValueError\(", handle.read()))
            if count:
                found[relative] = count
    assert found == INTERNAL_VALUE_ERRORS, "raise ConfigError / DataError (recbole_mm.errors) for config or data mistakes"


def test_positional_rows_suggest_feature_id_map_and_print_plain_tokens():
    with pytest.raises(FeatureFileError) as error:
        rows_for_tokens(np.array(["B00X1", "B00X2", "3"]), 5, source="text_feat.npy")
    message = str(error.value)
    assert "feature_id_map" in message and "['B00X1', 'B00X2']" in message
    assert "np.str_" not in message
    with pytest.raises(FeatureFileError) as error:
        rows_for_tokens(np.array(["1", "99"]), 5, source="text_feat.npy")
    assert "['99']" in str(error.value) and "feature_id_map" not in str(error.value), "numeric tokens: a row count issue"


def test_id_map_errors_name_the_id_map_and_the_repeated_token(tmp_path):
    path = tmp_path / "item_ids.txt"
    path.write_text("a\nb\nc\nb\nd\nb\n")
    with pytest.raises(FeatureFileError) as error:
        read_id_map(str(path))
    message = str(error.value)
    assert str(path) in message and "item token b is listed 3 times" in message
    with pytest.raises(FeatureFileError) as error:
        rows_for_tokens(np.array(["a", "zz"]), 2, id_map=["a", "b"], source="text_feat.npy", id_map_source=str(path))
    message = str(error.value)
    assert message.startswith(f"{path}:") and "['zz']" in message and "not listed in this id map" in message


def test_missing_modality_names_the_modalities_key():
    stub = types.SimpleNamespace(device=torch.device("cpu"))
    dataset = types.SimpleNamespace(modality_features={"text": torch.zeros(3, 2)})
    with pytest.raises(ConfigError) as error:
        MultiModalRecommender._select_modalities(stub, {"modalities": ["image"], "dataset": "toy"}, dataset)
    assert "config key modalities: ['image']" in str(error.value) and "it has ['text']" in str(error.value)


def test_results_are_plain_floats():
    result = plain_result({"recall@10": np.float64(0.25), "gauc": np.float32(0.5)})
    assert all(type(value) is float for value in result.values())
    assert "np." not in str(result)


def _guider_stub(hash_confidence, amsc=False):
    messages = []
    logger = logging.getLogger("guider-stub")
    logger.warning = messages.append
    config = {"guider_modalities": ["text"], "guider_hash_confidence": hash_confidence, "dataset": "toy",
              "guider_hash_bits": 8, "guider_cca_dims": 4}
    stub = types.SimpleNamespace(config=config, use_amsc=amsc, device=torch.device("cpu"), logger=logger)
    dataset = types.SimpleNamespace(modality_features={"text": torch.randn(6, 4), "image": torch.randn(6, 4)},
                                    item_num=6)
    return stub, dataset, messages


def test_guider_warns_when_one_modality_drops_the_hash_confidence():
    stub, dataset, messages = _guider_stub(hash_confidence=True)
    GUIDERTrainer._setup_modalities(stub, dataset)
    assert torch.equal(stub.confidence, torch.ones(6)), "one modality: no hash, S_conf = 1"
    assert len(messages) == 1 and "S_conf" in messages[0] and "guider_hash_confidence" in messages[0]
    stub, dataset, messages = _guider_stub(hash_confidence=False)
    GUIDERTrainer._setup_modalities(stub, dataset)
    assert messages == [], "nothing is dropped when the hash confidence is off"
