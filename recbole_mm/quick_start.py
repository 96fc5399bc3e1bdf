"""Entry points with the signatures of ``recbole.quick_start``: train, evaluate, search, reload.

The package's top floor (nothing in ``recbole_mm`` imports it; ``run_recbole_mm.py`` does):

- :func:`run_recbole_mm`, :func:`objective_function`, :func:`run_grid`,
  :func:`load_data_and_model` and their helpers are :mod:`recbole_mm.pipeline`'s;
- :func:`run_hyper` is :func:`recbole_mm.hyper.run_hyper` (every trial in a process of its own);
- :func:`run_distributed` is :func:`recbole_mm.distributed.run_distributed` (one run on
  ``nproc`` processes).

Layers, lowest first (``tests/test_structure.py`` checks that every import, function-level
ones included, points down this list): errors, files, options, collectives, mmrec_format →
compat, features, prepare → data → model, utils → config → trainer → pipeline → hyper,
distributed → quick_start. (``recbole.quick_start`` itself is never imported: it pulls in ray.)
"""
from recbole_mm.distributed import run_distributed
from recbole_mm.hyper import run_hyper
from recbole_mm.pipeline import (  # noqa: F401  (_build, _trainer: for tests, outside __all__)
    FILE_ONLY,
    _build,
    _trainer,
    grid_configs,
    held_log_records,
    init_logging,
    load_data_and_model,
    log_file_path,
    objective_function,
    plain_result,
    run_grid,
    run_recbole_mm,
    run_summary,
)

__all__ = ["FILE_ONLY", "grid_configs", "held_log_records", "init_logging", "load_data_and_model", "log_file_path",
           "objective_function", "plain_result", "run_distributed", "run_grid", "run_hyper", "run_recbole_mm",
           "run_summary"]
