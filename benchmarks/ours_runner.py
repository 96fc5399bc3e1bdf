"""Run one model through ``recbole_mm`` on one CPU thread and print its results as a last
``RESULT {json}`` line; started by ``benchmarks/compare_reference.py``.

    python benchmarks/ours_runner.py MODEL DATASET CONFIG_JSON

With ``RECBOLE_MM_MAX_BATCHES=N`` in the environment (``compare_reference.py --max-batches``),
every training epoch stops after its first N batches.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(model, dataset, config_json):
    import torch

    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]  # RecBole reads --key=value from the command line
    from recbole_mm.quick_start import run_recbole_mm

    if os.environ.get("RECBOLE_MM_MAX_BATCHES"):
        from recbole.trainer import Trainer
        from truncated_loader import truncate_training

        truncate_training(Trainer, int(os.environ["RECBOLE_MM_MAX_BATCHES"]))

    result = run_recbole_mm(model, dataset, None, json.loads(config_json))
    as_floats = lambda metrics: {key: float(value) for key, value in metrics.items()}  # noqa: E731
    # GUIDER: which runs were kept (guider_kd_retry, guider_fallback)
    kept = {name: getattr(result["trainer"], f"{name}_history", None) for name in ("retry", "fallback")}
    print("RESULT " + json.dumps({"best_valid_result": as_floats(result["best_valid_result"]),
                                  "test_result": as_floats(result["test_result"]),
                                  **{name: history for name, history in kept.items() if history}}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
