"""The few patches RecBole 1.2.1 needs on numpy 2 / pandas 3 / scipy 1.17 / torch 2.6+.

Applied once, by ``import recbole_mm``. Each patch is small, targeted at RecBole's own
call sites, and covered by a test in ``tests/test_compat.py`` that fails without it.

1. ``numpy_aliases``: numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``;
   RecBole's ``Config.compatibility_settings`` reads them (to re-create ``np.float`` etc.),
   so every ``Config(...)`` raises ``AttributeError`` without them.
2. ``trusted_checkpoint_load``: torch >= 2.6 loads with ``weights_only=True`` by default,
   which refuses RecBole's own checkpoints (they pickle the ``Config``). Only the ``torch``
   name inside ``recbole.trainer.trainer`` is replaced, by a proxy whose ``load`` defaults
   to ``weights_only=False``; ``torch.load`` everywhere else keeps its safe default.
3. ``dok_update``: scipy >= 1.13 dropped ``dok_matrix._update``, which RecBole's graph
   models (LightGCN, NGCF, NCL, GCMC, SpectralCF) use to fill their adjacency.
4. ``fill_nan``: ``Dataset._fill_nan`` calls ``feat[field].fillna(..., inplace=True)``,
   which under pandas 3 (copy-on-write) fills a temporary and leaves the column untouched;
   it also uses ``np.float``. The replacement assigns the filled column back.
5. ``ray``: ``import recbole.quick_start`` imports ray, which fails on setuptools >= 81
   and numpy 2. recbole_mm never imports ``recbole.quick_start``; nothing to patch.
6. ``amp_without_deprecation``: RecBole's trainer builds ``torch.cuda.amp.GradScaler`` every
   epoch, which torch >= 2.4 answers with a FutureWarning; the ``amp`` name inside
   ``recbole.trainer.trainer`` becomes ``torch.amp``'s CUDA scaler and autocast (same objects).
7. ``quiet_readonly_arrays``: ``Dataset._dataframe_to_interaction`` hands pandas' read-only
   (copy-on-write) arrays to ``torch.LongTensor``, which copies them but warns that the array
   is not writable; that one warning is silenced there, nowhere else.
8. ``explicit_sparse_checks``: torch 2.13 warns at the first sparse tensor built while the
   invariant checks are off by default ("implicitly disabled"). The plugin's graphs are built
   from indices it computes, so the checks stay off, now explicitly (unless already enabled).
9. ``distributed_backend``: RecBole's distributed path (``local_rank`` in the config) always
   joins an NCCL process group and puts the rank on ``cuda:<local_rank>``, and its trainer
   wraps the model in ``DistributedDataParallel(device_ids=[local_rank])``, which torch
   refuses for a CPU module. ``Config._init_device`` and ``AbstractTrainer.__init__`` are
   replaced by versions that choose NCCL/CUDA on GPUs and gloo/CPU otherwise
   (:func:`recbole_mm.collectives.init_device`, :func:`recbole_mm.collectives.wrap_model`).
10. ``rank_checkpoint``: on a distributed run only rank 0 writes the checkpoint, but every rank
   reloads it (``evaluate(load_best_model=True)``) from a path it named itself,
   ``<model>-<local time to the second>.pth``: a rank whose trainer starts in another second
   than rank 0's looks for a file that does not exist, and any rank may open the file while
   rank 0 is still writing it (no barrier). After ``Trainer.__init__`` every rank takes rank
   0's ``saved_model_file``; ``Trainer.evaluate`` waits for every rank before it loads a
   checkpoint. (Loading it needs ``weights_only=False`` on torch >= 2.6: patch 2.)
11. ``ensure_dir``: RecBole's ``ensure_dir`` tests for the folder, then creates it; two ranks
   starting together (``log/``, ``saved/``) race, and the loser dies with ``FileExistsError``.
   The copies imported by RecBole's logger, trainer and data utilities become
   ``os.makedirs(path, exist_ok=True)``.
12. ``lazy_sklearn_metrics``: ``recbole.evaluator.metrics`` imports ``sklearn.metrics`` (for
   AUC, MAE and RMSE only), which pulls in scikit-learn and ``scipy.stats``: about 70 MB of
   resident memory in every run, and a second of start-up, for metrics a top-k run never
   computes. While RecBole's metrics module is imported, ``sklearn.metrics`` is a stand-in
   whose three functions import the real module at their first call; the stand-in is then
   removed, so any later ``import sklearn.metrics`` gets scikit-learn itself.
13. ``quiet_sparse_constructor``: RecBole's graph models (LightGCN, NGCF, NCL, GCMC, DGCF,
   DMF) build their adjacency with ``torch.sparse.FloatTensor``, which torch 2.13 answers with
   a deprecation warning at every build: in every GUIDER run (its LightGCN teacher). That one
   warning is ignored when a ``recbole.*`` module triggers it; the plugin's own code never
   calls the old constructor, and other code keeps the warning.
"""
import functools
import os
import types
import warnings

import numpy as np
import scipy.sparse as sp
import torch

_APPLIED = False


def _deferred(name):
    """A function that imports ``sklearn.metrics`` at its first call and calls its ``name``."""
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module("sklearn.metrics"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def patch_lazy_sklearn_metrics():
    """Import ``recbole.evaluator.metrics`` against a stand-in ``sklearn.metrics`` (no-op when
    either is imported already)."""
    import sys

    if "recbole.evaluator.metrics" in sys.modules or "sklearn.metrics" in sys.modules:
        return
    stand_in = types.ModuleType("sklearn.metrics")
    for name in ("auc", "mean_absolute_error", "mean_squared_error"):
        setattr(stand_in, name, _deferred(name))
    sys.modules["sklearn.metrics"] = stand_in
    try:
        import recbole.evaluator.metrics  # noqa: F401
    finally:
        if sys.modules.get("sklearn.metrics") is stand_in:
            del sys.modules["sklearn.metrics"]


def patch_numpy_aliases():
    """Restore the numpy 1.x aliases RecBole's ``Config`` reads."""
    aliases = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}
    for name, value in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, value)


class _TorchWithTrustedLoad(types.ModuleType):
    """Stands in for ``torch`` inside ``recbole.trainer.trainer`` only."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(f, *args, **kwargs)


def patch_trusted_checkpoint_load():
    """Let RecBole's trainer load the checkpoints it wrote itself."""
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.torch, _TorchWithTrustedLoad):
        recbole_trainer.torch = _TorchWithTrustedLoad()


def _dok_update(self, data):
    """``dok_matrix._update`` as scipy < 1.13 had it: bulk-insert ``{(row, col): value}``."""
    storage = self._dict if hasattr(self, "_dict") else super(sp.dok_matrix, self)
    storage.update(data)


def patch_dok_update():
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = _dok_update


def _fill_nan(self):
    """``Dataset._fill_nan`` that works under pandas copy-on-write.

    Token fields get 0 ([PAD]), float fields the column mean, sequence fields an empty array.
    """
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def patch_fill_nan():
    from recbole.data.dataset import Dataset

    Dataset._fill_nan = _fill_nan


class _CudaAmp(types.ModuleType):
    """Stands in for ``torch.cuda.amp`` inside ``recbole.trainer.trainer`` only."""

    def __init__(self):
        super().__init__("amp")
        self.GradScaler = functools.partial(torch.amp.GradScaler, "cuda")
        self.autocast = functools.partial(torch.autocast, "cuda")


def patch_amp_without_deprecation():
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.amp, _CudaAmp):
        recbole_trainer.amp = _CudaAmp()


def patch_quiet_readonly_arrays():
    from recbole.data.dataset import Dataset

    original = Dataset._dataframe_to_interaction
    if getattr(original, "quiet_readonly", False):
        return

    @functools.wraps(original)
    def dataframe_to_interaction(self, data):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            return original(self, data)

    dataframe_to_interaction.quiet_readonly = True
    Dataset._dataframe_to_interaction = dataframe_to_interaction


def patch_quiet_sparse_constructor():
    """Ignore torch's deprecation of ``torch.sparse.FloatTensor`` where RecBole calls it."""
    warnings.filterwarnings("ignore", message=r"torch\.sparse\.SparseTensor\(indices, values, shape",
                            category=UserWarning, module=r"recbole\.")


def patch_explicit_sparse_checks():
    checks = torch.sparse.check_sparse_tensor_invariants
    if not checks.is_enabled():
        checks.disable()
def _trainer_init(self, config, model):
    """``AbstractTrainer.__init__`` with the DDP wrapper of :func:`recbole_mm.collectives.wrap_model`."""
    from recbole_mm.collectives import wrap_model

    self.config = config
    self.model = model
    if not config["single_spec"]:
        self.model, self.distributed_model = wrap_model(model, config)


def patch_distributed_backend():
    """NCCL on GPUs, gloo on CPUs, for RecBole's process group and its DDP wrapper."""
    from recbole.config import Config
    from recbole.trainer.trainer import AbstractTrainer

    from recbole_mm.collectives import init_device

    Config._init_device = init_device
    AbstractTrainer.__init__ = _trainer_init


def patch_rank_checkpoint():
    """Every rank reads rank 0's checkpoint, and only once it is written."""
    from recbole.trainer.trainer import Trainer

    if getattr(Trainer, "_recbole_mm_rank_checkpoint", False):
        return
    init, evaluate = Trainer.__init__, Trainer.evaluate

    def __init__(self, config, model):
        from recbole_mm.collectives import broadcast_object

        init(self, config, model)
        self.saved_model_file = broadcast_object(self.saved_model_file, config)

    def evaluate_after_rank_zero(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        from recbole_mm.collectives import barrier

        if eval_data and load_best_model:
            barrier(self.config)
        return evaluate(self, eval_data, load_best_model, model_file, show_progress)

    __init__.__doc__ = init.__doc__
    evaluate_after_rank_zero.__doc__ = evaluate.__doc__
    Trainer.__init__ = __init__
    Trainer.evaluate = evaluate_after_rank_zero
    Trainer._recbole_mm_rank_checkpoint = True


def _ensure_dir(dir_path):
    """``recbole.utils.ensure_dir`` without the check-then-create race between processes."""
    os.makedirs(dir_path, exist_ok=True)


def patch_ensure_dir():
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    for module in (recbole.utils.utils, recbole.utils, recbole.utils.logger, recbole.trainer.trainer,
                   recbole.data.utils):
        module.ensure_dir = _ensure_dir


def apply_patches():
    """Apply every patch once; safe to call again."""
    global _APPLIED
    if _APPLIED:
        return
    patch_lazy_sklearn_metrics()  # first: before anything imports RecBole's evaluator
    patch_numpy_aliases()
    patch_trusted_checkpoint_load()
    patch_dok_update()
    patch_fill_nan()
    patch_amp_without_deprecation()
    patch_quiet_readonly_arrays()
    patch_quiet_sparse_constructor()
    patch_explicit_sparse_checks()
    patch_distributed_backend()
    patch_rank_checkpoint()
    patch_ensure_dir()
    _APPLIED = True

