"""Each RecBole 1.2.1 patch in recbole_mm.compat, exercised where RecBole needs it."""
import os
import subprocess
import sys

import numpy as np
import torch

from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
from recbole_mm.data.graphs import normalized_adjacency
from recbole_mm.trainer import MultiModalTrainer
from recbole_mm.utils import get_model
from tests.conftest import REPO_ROOT


def test_numpy_aliases_let_recbole_config_start(run_config):
    config = Config("BPR", "synthetic", config_dict=run_config())
    assert np.float_ is np.float64 and np.unicode_ is np.str_ and np.complex_ is np.complex128
    assert config["model"] == "BPR"


def test_recbole_trainer_reloads_its_own_checkpoint(run_config):
    config = Config("BPR", "synthetic", config_dict=run_config(epochs=1))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model("BPR")(config, train._dataset)
    trainer = MultiModalTrainer(config, model)
    trainer.fit(train, valid, saved=True)
    reloaded = trainer.evaluate(test, load_best_model=True)  # torch.load of RecBole's pickle
    assert os.path.isfile(trainer.saved_model_file)
    assert 0.0 <= reloaded["recall@20"] <= 1.0
    # the patch is confined to RecBole's trainer: torch.load keeps its safe default elsewhere
    assert torch.load.__module__ == "torch.serialization"


def test_recbole_lightgcn_builds_its_adjacency_with_dok_update(run_config):
    config = Config("LightGCN", "synthetic", config_dict=run_config())
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    model = get_model("LightGCN")(config, train._dataset)
    ours = normalized_adjacency(model.interaction_matrix, model.n_users, model.n_items)
    assert torch.allclose(model.norm_adj_matrix.to_dense(), ours.to_dense(), atol=1e-6)


def test_fill_nan_fills_missing_float_values(tmp_path, run_config):
    folder = tmp_path / "data" / "withnan"
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\trating:float"]
    rows += [f"{u}\t{i}\t{'' if (u + i) % 5 == 0 else (u + i) % 4 + 1}" for u in range(20) for i in range(6)]
    (folder / "withnan.inter").write_text("\n".join(rows) + "\n")
    config = Config("BPR", "withnan", config_dict=run_config(
        data_path=str(tmp_path / "data"), synthetic_generator=None,
        load_col={"inter": ["user_id", "item_id", "rating"]},
    ))
    dataset = create_dataset(config)
    ratings = np.asarray(dataset.inter_feat["rating"], dtype=float)
    assert not np.isnan(ratings).any()
    observed = [(u + i) % 4 + 1 for u in range(20) for i in range(6) if (u + i) % 5]
    assert np.isclose(ratings, np.mean(observed)).sum() == 120 - len(observed)


def test_importing_the_plugin_never_imports_ray():
    code = (
        "import sys, recbole_mm, recbole_mm.quick_start, recbole_mm.trainer, recbole_mm.data;"
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_a_top_k_run_never_imports_scikit_learn():
    """RecBole's evaluator and POT import scikit-learn (and scipy.stats: ~70 MB resident); a run
    that needs neither AUC/MAE/RMSE nor Sinkhorn gets through without it, and RecBole's AUC still
    computes (importing it then)."""
    code = (
        "import sys, recbole_mm, recbole_mm.quick_start, recbole_mm.trainer, recbole_mm.data;"
        "import recbole.evaluator.metrics as metrics;"
        "assert 'sklearn' not in sys.modules, 'scikit-learn was imported';"
        "assert metrics.sk_auc([0.0, 1.0], [0.0, 1.0]) == 0.5 and 'sklearn.metrics' in sys.modules;"
        "import sklearn.metrics; assert sklearn.metrics.__file__.endswith('__init__.py')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert done.returncode == 0, done.stderr[-2000:]




SPARSE_CONSTRUCTOR_RUN = """
import sys, warnings
import recbole_mm
from recbole.model.general_recommender.lightgcn import LightGCN
from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
if sys.argv[2] == "unpatched":
    warnings.filters[:] = [f for f in warnings.filters if "SparseTensor" not in str(getattr(f[1], "pattern", ""))]
config = Config(LightGCN, "synthetic", None, {"data_path": sys.argv[1], "state": "WARNING",
                "synthetic_generator": {"seed": 7, "n_users": 100, "n_items": 80, "mean_interactions": 8}})
LightGCN(config, data_preparation(config, create_dataset(config))[0]._dataset)
"""


def test_recbole_graph_models_build_without_the_sparse_constructor_warning(tmp_path):
    """RecBole's LightGCN (GUIDER's teacher) calls torch.sparse.FloatTensor: torch's deprecation
    warning (once per process, hence a fresh interpreter each) is not shown, unless the
    patch's filter is taken out."""
    def stderr(mode):
        done = subprocess.run([sys.executable, "-W", "always", "-c", SPARSE_CONSTRUCTOR_RUN, str(tmp_path), mode],
                              cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    assert "SparseTensor(indices, values, shape" not in stderr("patched")
    assert "SparseTensor(indices, values, shape" in stderr("unpatched")
