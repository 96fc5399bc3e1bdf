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


# raises that stay outside RecboleMMError: internal invariants (a bug in the library or in a
# plugged-in component, not a config or data mistake), protocol signals, and raises caught on
# the spot. (module, innermost enclosing function, exception class name)
INTERNAL_RAISES = {
    ("model/layers.py", "propagate", "ValueError"),          # combine mode chosen by the model code
    ("model/layers.py", "__init__", "ValueError"),             # MLP sizes chosen by the model code
    ("data/graphs.py", "learned_item_graph", "ValueError"),  # called without mixing weights (model code)
    ("data/synthetic.py", "modality_features", "ValueError"),  # a wrong `out` array (a caller bug)
    ("trainer/bod.py", "forward", "ValueError"),  # weights of another batch (a trainer bug)
    ("model/loss.py", "forward", "ValueError"),  # denoise: damrs weights of another batch (a trainer bug)
    ("collectives.py", "get_data_struct", "RuntimeError"),  # a collector struct of the wrong length
    ("hyper.py", "read_hyper_file", "ValueError"),           # caught on the spot, re-raised as HyperFileError
    ("prepare.py", "_fetch", "DownloadFailed"),              # caught by download_images, recorded per URL
    ("features/__init__.py", "__getattr__", "AttributeError"),  # the module __getattr__ protocol
    ("features/clip.py", "pooled_embedding", "TypeError"),   # an unexpected transformers output type
    ("features/vlm.py", "open_image", "ValueError"),         # caught per item, recorded in the cache
    ("features/vlm.py", "checked_descriptions", "ValueError"),  # a describer that breaks its protocol
    ("features/vlm.py", "checked_descriptions", "TypeError"),
}
# config.py's value checkers raise a bare ValueError that check_values turns into a ConfigError
# naming the key
CONFIG_CHECKERS = {"_in_range", "_as_number", "convert", "_raise"}


def library_raises():
    """(module path relative to recbole_mm, enclosing function or class, raised class or None for
    a re-raise of a bound exception, line) for every ``raise`` of the package."""
    import ast
    import builtins
    import importlib

    root = os.path.join(REPO_ROOT, "recbole_mm")
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            dotted = "recbole_mm." + relative[:-3].replace("/", ".").removesuffix(".__init__")
            module = importlib.import_module(dotted)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            imported = {}  # names bound by `from x import y` anywhere in the file (function-level too)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    for alias in node.names:
                        imported[alias.asname or alias.name] = (node.module, alias.name)
            owner = {}
            for node in ast.walk(tree):  # innermost enclosing def/class wins: walk is outer-first
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    for inner in ast.walk(node):
                        if isinstance(inner, ast.Raise):
                            owner[inner] = node.name
            for node in ast.walk(tree):
                if not isinstance(node, ast.Raise) or node.exc is None:
                    continue  # a bare `raise` re-raises what was caught
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                text = ast.unparse(target)
                head, *rest = text.split(".")
                if hasattr(module, head):
                    value = getattr(module, head)
                elif head in imported:
                    value = getattr(importlib.import_module(imported[head][0]), imported[head][1], None)
                else:
                    value = getattr(builtins, head, None)
                for part in rest:
                    value = getattr(value, part, None)
                if isinstance(value, type) and issubclass(value, BaseException):
                    yield relative, owner.get(node, "<module>"), value, node.lineno
                else:
                    assert not isinstance(node.exc, ast.Call), f"{relative}:{node.lineno}: cannot resolve {text}"
                    yield relative, owner.get(node, "<module>"), None, node.lineno  # `raise error`


def test_every_library_raise_is_a_recbole_mm_error_or_a_listed_internal_one():
    """Name-based: every exception class the library raises resolves to a RecboleMMError
    subclass (the command line prints those as one line, exit 2), except the commented
    internal ones above; the allow-list has no stale entry."""
    problems, used = [], set()
    for relative, owner, error, line in library_raises():
        if error is None or issubclass(error, RecboleMMError) or error is NotImplementedError:
            continue  # NotImplementedError: an abstract method or a model without that route (a protocol)
        key = (relative, owner, error.__name__)
        if relative == "config.py" and owner in CONFIG_CHECKERS and error is ValueError:
            used.add("checkers")
            continue
        if key in INTERNAL_RAISES:
            used.add(key)
            continue
        problems.append(f"recbole_mm/{relative}:{line} ({owner}) raises {error.__name__}")
    assert problems == [], "raise a recbole_mm.errors class (ConfigError, DataError, ...) for user mistakes"
    assert used == INTERNAL_RAISES | {"checkers"}, f"stale allow-list entries: {INTERNAL_RAISES - used}"


def test_the_scan_sees_raises_of_every_kind():
    """The AST scan resolves imported, module-level and builtin classes."""
    found = {(relative, error.__name__) for relative, _, error, _ in library_raises() if error is not None}
    assert ("features/vlm.py", "MissingFileError") in found and ("hyper.py", "HyperFileError") in found
    assert ("trainer/guider_ops.py", "ConfigError") in found and ("model/layers.py", "ValueError") in found


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
