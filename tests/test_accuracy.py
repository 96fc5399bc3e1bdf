"""Same data (the bundled synthetic dataset), same budget: content-aware models win.

Each model is trained once per test session (40 epochs at most, early stopping as packaged)
and the comparisons below read the shared results.
"""
import sys

import pytest

from recbole_mm.quick_start import run_recbole_mm

MODELS = ("VBPR", "LIRDRec", "FREEDOM", "LightGCN", "BPR", "Pop")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("accuracy")
    shared = {"data_path": str(root / "data"), "checkpoint_dir": str(root / "saved"), "state": "WARNING", "epochs": 40}
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["pytest"])
        patch.chdir(root)
        for model in MODELS:
            runs[model] = run_recbole_mm(model, "synthetic", config_dict=dict(shared))
    return runs


def valid(results, model):
    return results[model]["best_valid_result"]["recall@20"]


def test_vbpr_beats_bpr_and_popularity(results):
    """The features reach the model: VBPR beats the same model without them (BPR)."""
    assert results["VBPR"]["test_result"]["recall@20"] > results["BPR"]["test_result"]["recall@20"] + 0.01
    assert valid(results, "VBPR") > 1.5 * valid(results, "Pop")


@pytest.mark.parametrize("model", ["LIRDRec", "FREEDOM"])
def test_multimodal_graph_models_beat_lightgcn_and_bpr(results, model):
    assert valid(results, model) > valid(results, "LightGCN") + 0.02
    assert valid(results, model) > valid(results, "BPR") + 0.02
