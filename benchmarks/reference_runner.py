"""Run one MMRec model (enoche/MMRec's ``quick_start``) under today's numpy / torch, on one
CPU thread; started by ``benchmarks/compare_reference.py`` in a separate interpreter.

    python benchmarks/reference_runner.py SRC_DIR MODEL DATASET CONFIG_JSON

``SRC_DIR`` is MMRec's ``src/`` (a temporary copy: the runner changes into it, since MMRec
reads ``configs/`` from the working directory). ``CONFIG_JSON`` is MMRec's ``config_dict``.

Compatibility shims, applied here at run time (MMRec's files are never edited):
- numpy 2 removed ``np.float`` / ``np.int`` / ``np.bool`` / ``np.object``: put back as the
  builtins they aliased;
- modules MMRec imports but never uses with pre-extracted features (``lmdb``,
  ``matplotlib.pyplot``, ``PIL``, ``torchvision``) are stubbed when absent;
- without CUDA, ``Tensor.cuda()`` / ``Module.cuda()`` (hard-coded in LATTICE, MGCN, GRCN)
  return the object on the CPU.
"""
import builtins
import json
import os
import sys
import types

# imported by MMRec for raw images / plots only (never with pre-extracted features)
STUBBED = ("lmdb", "matplotlib", "matplotlib.pyplot", "PIL", "PIL.Image", "torchvision", "torchvision.transforms",
           "torchvision.transforms.functional")


def install_shims():
    import numpy as np
    import torch

    for name in ("float", "int", "bool", "object"):
        if name not in np.__dict__:
            setattr(np, name, getattr(builtins, name))
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
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.set_num_threads(1)


def _missing(name, attr):
    """A stand-in for ``name`` that fails only when used."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    def fail(*args, **kwargs):
        raise ImportError(f"{name} is stubbed by reference_runner.py (not installed)")
    return type(name.rsplit(".", 1)[-1], (), {"__init__": fail, "__call__": fail})


def main(src_dir, model, dataset, config_json):
    install_shims()
    config_dict = json.loads(config_json)
    os.chdir(src_dir)
    sys.path.insert(0, src_dir)
    from utils.quick_start import quick_start

    quick_start(model=model, dataset=dataset, config_dict=config_dict, save_model=False)


if __name__ == "__main__":
    main(*sys.argv[1:5])
