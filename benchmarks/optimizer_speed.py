"""``optimizer_impl``: seconds per Adam step over FREEDOM's tables and per FREEDOM training
epoch, single-tensor (RecBole's) vs foreach vs fused, on one CPU thread.

    python benchmarks/optimizer_speed.py                 # step timings + epochs on a Baby-sized synthetic set
    python benchmarks/optimizer_speed.py --steps-only

The epoch timing uses a synthetic dataset the size of Amazon Baby (19,445 users, 7,050 items,
4,096-d image and 384-d text features, trainable as in MMRec's FREEDOM), generated once into
``--data-path``.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMPLS = ("single", "foreach", "fused")
BABY = {"n_users": 19445, "n_items": 7050, "mean_interactions": 8,
        "modalities": {"text": {"dim": 384, "signal": 1.0, "nuisance": 0.5, "noise": 0.5, "nuisance_dim": 16},
                       "image": {"dim": 4096, "signal": 0.6, "nuisance": 1.5, "noise": 0.8, "nuisance_dim": 16}}}


def step_seconds(n_users, n_items, repeats=5):
    """impl -> mean seconds of one Adam step over FREEDOM-shaped tables with random gradients."""
    from recbole_mm.trainer.trainer import build_optimizer

    shapes = [(n_items, 4096), (n_items, 384), (n_users + n_items, 64), (4096, 64), (384, 64)]
    result = {}
    for impl in IMPLS:
        params = [torch.nn.Parameter(torch.randn(*shape) * 0.01) for shape in shapes]
        for param in params:
            param.grad = torch.randn_like(param) * 0.01
        optimizer = build_optimizer("adam", params, impl, lr=1e-3)
        optimizer.step()  # allocate the state
        start = time.perf_counter()
        for _ in range(repeats):
            optimizer.step()
        result[impl] = (time.perf_counter() - start) / repeats
    return result


def epoch_seconds(data_path, epochs=2):
    """impl -> seconds of each FREEDOM training epoch on the Baby-sized synthetic set."""
    from recbole.utils import init_seed

    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset, data_preparation
    from recbole_mm.model.freedom import FREEDOM
    from recbole_mm.trainer.trainer import MultiModalTrainer

    config = Config(FREEDOM, "babysize", None, {
        "state": "WARNING", "data_path": data_path, "checkpoint_dir": os.path.join(data_path, "saved"),
        "synthetic_generator": BABY, "modality_files": {"image": "image_feat.npy", "text": "text_feat.npy"},
        "modality_dims": None})
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train_data = data_preparation(config, dataset)[0]
    result = {}
    for impl in IMPLS:
        config["optimizer_impl"] = impl
        init_seed(config["seed"], True)
        trainer = MultiModalTrainer(config, FREEDOM(config, train_data._dataset))
        times = []
        for epoch in range(epochs):
            start = time.perf_counter()
            trainer._train_epoch(train_data, epoch)
            times.append(time.perf_counter() - start)
        result[impl] = times
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument("--data-path", default="/tmp/recbole_mm_optimizer_speed/")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole reads --key=value from the command line
    torch.set_num_threads(1)
    for label, users, items in (("Baby", 19445, 7050), ("Sports", 35598, 18357)):
        timings = step_seconds(users, items)
        print(f"Adam step, {label}-sized FREEDOM tables: " + ", ".join(f"{k} {v:.3f} s" for k, v in timings.items()))
    if not args.steps_only:
        for impl, times in epoch_seconds(args.data_path).items():
            print(f"FREEDOM epoch, Baby-sized synthetic, {impl}: " + ", ".join(f"{t:.1f} s" for t in times))


if __name__ == "__main__":
    main()
