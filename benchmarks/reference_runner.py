"""Run one reference model under today's numpy / torch, on one CPU thread; started by
``benchmarks/compare_reference.py`` in a separate interpreter.

    python benchmarks/reference_runner.py SRC_DIR MODEL DATASET CONFIG_JSON   # enoche/MMRec
    python benchmarks/reference_runner.py --micro CODES_DIR ARG...            # CRIPAC-DIG/MICRO

``SRC_DIR`` is MMRec's ``src/`` (a temporary copy: the runner changes into it, since MMRec
reads ``configs/`` from the working directory, or into its parent for a fork that reads
``src/configs/``, dangkh/VIRAL); ``CONFIG_JSON`` is MMRec's ``config_dict``.
``CODES_DIR`` is MICRO's ``codes/`` (a temporary copy), whose ``main.py`` runs with ``ARG...``.
With ``RECBOLE_MM_MAX_BATCHES=N`` in the environment (``compare_reference.py --max-batches``),
MMRec's ``Trainer.fit`` trains every epoch on the first N batches only (MICRO: not supported).

Compatibility shims, applied here at run time (MMRec's files are never edited):
- names numpy 2 removed (``np.float`` / ``np.int`` / ``np.bool`` / ``np.object``, ``np.float_``,
  ``np.asfarray``, ``np.NaN``, ...) are put back as what they aliased;
- modules MMRec imports but never uses with pre-extracted features (``lmdb``,
  ``matplotlib.pyplot``, ``PIL``, ``torchvision``; COHESION's unused ``torch_sparse``) are
  stubbed when absent;
- ``scipy.sparse.dok_matrix._update`` (removed in scipy 1.13; FREEDOM / BM3 / LayerGCN build
  their adjacency with it) is put back as a bulk update of the matrix's entries;
- ``torch_scatter`` (no wheel for this torch), when absent, is a module of ours with the two
  functions MMRec / MICRO call, ``scatter_add`` and ``scatter`` (sum / mean), on
  ``Tensor.scatter_add_``;
- ``torch_dct`` (enoche/LIRDRec's type-II DCT; not in the reference venv), when absent, is a
  module of ours whose ``dct(x, norm=...)`` is ``scipy.fft.dct(x, type=2, norm=..., axis=-1)``
  (LIRDRec calls it once, in ``__init__``);
- ``sparsesvd`` (SVDLIBC; PGL imports it, and calls it in its ``global`` mode only; it does not
  build against numpy 2), when absent, is a module of ours whose ``sparsesvd(A, k)`` returns
  SVDLIBC's ``(ut, s, vt)`` (``ut``: k x m, ``s`` descending, ``vt``: k x n) from
  ``scipy.sparse.linalg.svds``;
- MICRO only: ``multiprocessing.cpu_count()`` reads 5, so its ranking Pool
  (``cpu_count() // 5`` workers) has one worker on small machines instead of failing;
- without CUDA, DRAGON's / DualGNN's / VLIF's ``result_embed`` is a plain tensor as on CUDA (see
  :data:`GPU_PLAIN_TENSORS`);
- without CUDA, ``Tensor.cuda()`` / ``Module.cuda()`` (hard-coded in LATTICE, MGCN, GRCN)
  return the object on the CPU.
"""
import builtins
import importlib
import json
import os
import sys
import types

# imported by MMRec for raw images / plots only (never with pre-extracted features); torch_sparse
# is imported, never used, by Jinfeng-Xu/COHESION
STUBBED = ("lmdb", "torch_sparse", "matplotlib", "matplotlib.pyplot", "PIL", "PIL.Image", "torchvision", "torchvision.transforms",
           "torchvision.transforms.functional")


def install_shims():
    import numpy as np
    import torch

    removed = {"float": builtins.float, "int": builtins.int, "bool": builtins.bool, "object": builtins.object,
               "float_": np.float64, "NaN": np.nan, "Inf": np.inf, "product": np.prod, "alltrue": np.all,
               "sometrue": np.any, "asfarray": lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)}
    for name, value in removed.items():
        if name not in np.__dict__:
            setattr(np, name, value)
    for name in STUBBED:
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__path__ = []  # a package, so that its submodules import as stubs too
            stub.__getattr__ = lambda attr, _name=name: _missing(f"{_name}.{attr}", attr)
            sys.modules[name] = stub
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, stub)
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):  # bulk insert without checks, gone in scipy 1.13
        sp.dok_matrix._update = lambda self, entries: self._dict.update(entries)
    try:
        import torch_scatter  # noqa: F401
    except ImportError:
        sys.modules["torch_scatter"] = scatter_module()
    try:
        import torch_dct  # noqa: F401
    except ImportError:
        sys.modules["torch_dct"] = dct_module()
    try:
        import sparsesvd  # noqa: F401
    except ImportError:
        sys.modules["sparsesvd"] = sparsesvd_module()
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.set_num_threads(1)


def scatter_module():
    """``torch_scatter``'s ``scatter_add`` / ``scatter(reduce='sum'|'mean')``: rows of ``src``
    summed (averaged) into ``out[index]`` along ``dim``; a 1-D ``index`` broadcasts over the
    other dimensions, as in torch_scatter."""
    import torch

    def _expand(src, index, dim):
        if index.dim() == 1 and src.dim() > 1:
            shape = [1] * src.dim()
            shape[dim] = -1
            index = index.view(shape).expand_as(src)
        return index

    def scatter_add(src, index, dim=-1, out=None, dim_size=None):
        dim = dim % src.dim()
        index = _expand(src, index, dim)
        if out is None:
            size = list(src.shape)
            size[dim] = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
            out = src.new_zeros(size)
        return out.scatter_add_(dim, index, src)

    def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
        total = scatter_add(src, index, dim, out, dim_size)
        if reduce in ("sum", "add"):
            return total
        if reduce == "mean":
            counts = scatter_add(torch.ones_like(src), index, dim, None, total.shape[dim % src.dim()])
            return total / counts.clamp(min=1)
        raise NotImplementedError(f"torch_scatter shim: reduce={reduce!r}")

    module = types.ModuleType("torch_scatter")
    module.scatter_add, module.scatter = scatter_add, scatter
    return module


def dct_module():
    """``torch_dct.dct``: the type-II DCT along the last dimension (``norm=None`` or ``'ortho'``),
    by ``scipy.fft.dct``; the result keeps the input's dtype and device."""
    import torch
    from scipy import fft

    def dct(x, norm=None):
        # both scale the unnormalised DCT-II as 2 Σ_n x_n cos(π k (2n + 1) / 2N)
        values = fft.dct(x.detach().cpu().numpy(), type=2, norm=norm, axis=-1)
        return torch.from_numpy(values).to(device=x.device, dtype=x.dtype)

    module = types.ModuleType("torch_dct")
    module.dct = dct
    return module


def sparsesvd_module():
    """``sparsesvd.sparsesvd(A, k)``: the k largest singular triplets of a sparse matrix, in
    SVDLIBC's layout (``ut`` k x m, ``s`` descending, ``vt`` k x n)."""
    import numpy as np
    from scipy.sparse.linalg import svds

    def sparsesvd(matrix, k):
        u, s, vt = svds(matrix.astype(np.float64), k=k)
        order = np.argsort(-s)
        return u[:, order].T, s[order], vt[order]

    module = types.ModuleType("sparsesvd")
    module.sparsesvd = sparsesvd
    return module


def _missing(name, attr):
    """A stand-in for ``name`` that fails only when used."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    def fail(*args, **kwargs):
        raise ImportError(f"{name} is stubbed by reference_runner.py (not installed)")
    return type(name.rsplit(".", 1)[-1], (), {"__init__": fail, "__call__": fail})


# Parameters MMRec creates as ``nn.Parameter(...).to(device)``: on CUDA ``.to`` returns a plain
# tensor (unregistered, untrained, later overwritten in forward); on the CPU it returns the
# registered Parameter itself, and the overwrite fails. Made plain tensors, as on CUDA.
GPU_PLAIN_TENSORS = {"DRAGON": ("result_embed",), "DualGNN": ("result_embed",), "VLIF": ("result_embed",),
                     "COHESION": ("result_embed",),
                     "MENTOR": ("result_embed", "result_embed_guide", "result_embed_v", "result_embed_t",
                                "result_embed_n1", "result_embed_n2")}


def cuda_parity(get_model):
    """``get_model`` whose classes in :data:`GPU_PLAIN_TENSORS` hold those attributes as plain
    tensors after ``__init__`` when running on the CPU."""
    import torch

    def patched(name):
        model_class = get_model(name)
        names = GPU_PLAIN_TENSORS.get(name)
        if not names or torch.cuda.is_available():
            return model_class

        def __init__(self, *args, **kwargs):
            model_class.__init__(self, *args, **kwargs)
            for attr in names:
                value = self._parameters.pop(attr, None)
                if value is not None:
                    self.__dict__[attr] = value.detach()

        return type(model_class.__name__, (model_class,), {"__init__": __init__})

    return patched


def alias_models_common(src_dir):
    """MMRec's ``layergcn.py`` imports ``models.common...``, a package its tree does not have
    (the helpers are ``common/``): alias it, so that the model imports as its author meant."""
    if not os.path.isdir(os.path.join(src_dir, "common")) or os.path.isdir(os.path.join(src_dir, "models", "common")):
        return
    models = importlib.import_module("models")
    common = importlib.import_module("common")
    sys.modules["models.common"] = models.common = common
    for name in ("abstract_recommender", "loss", "encoders", "init"):
        if os.path.isfile(os.path.join(src_dir, "common", f"{name}.py")):
            sys.modules[f"models.common.{name}"] = importlib.import_module(f"common.{name}")


def main(src_dir, model, dataset, config_json):
    install_shims()
    config_dict = json.loads(config_json)
    # MMRec reads configs/ from the working directory; forks that read src/configs/ (dangkh/VIRAL)
    # run from the directory above src/
    # MMRec's helpers are the package utils/; the Jinfeng-Xu forks (MENTOR, COHESION) name it utils_package/
    package = "utils" if os.path.isdir(os.path.join(src_dir, "utils")) else "utils_package"
    with open(os.path.join(src_dir, package, "configurator.py")) as handle:
        from_parent = "'src/configs'" in handle.read()
    os.chdir(os.path.dirname(os.path.abspath(src_dir)) if from_parent else src_dir)
    sys.path.insert(0, src_dir)
    alias_models_common(src_dir)
    quick_start = importlib.import_module(f"{package}.quick_start")
    quick_start.get_model = cuda_parity(quick_start.get_model)
    if os.environ.get("RECBOLE_MM_MAX_BATCHES"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from truncated_loader import truncate_training

        truncate_training(importlib.import_module("common.trainer").Trainer, int(os.environ["RECBOLE_MM_MAX_BATCHES"]))
    quick_start.quick_start(model=model, dataset=dataset, config_dict=config_dict, save_model=False)


def main_micro(codes_dir, *argv):
    import runpy

    if os.environ.get("RECBOLE_MM_MAX_BATCHES"):
        raise SystemExit("--max-batches: MICRO's own training loop cannot be truncated")

    import multiprocessing

    install_shims()
    # MICRO ranks with a Pool of cpu_count() // 5 workers: zero below five cores; one worker
    multiprocessing.cpu_count = lambda: 5
    os.chdir(codes_dir)
    sys.path.insert(0, codes_dir)
    sys.argv = ["main.py", *argv]
    runpy.run_path("main.py", run_name="__main__")


if __name__ == "__main__":
    if sys.argv[1] == "--micro":
        main_micro(*sys.argv[2:])
    else:
        main(*sys.argv[1:5])
