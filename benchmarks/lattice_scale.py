"""LATTICE (or MICRO) on a 63,000-item catalogue: graph build time, s/epoch, full-sort
evaluation time and peak memory.

MMRec's LATTICE forms items x items dense matrices (similarities, kNN masks, normalised
graphs) and runs out of memory at this size; ours builds every graph by chunked top-k. The
catalogue is generated into a temporary MMRec folder named ``sports`` (so the packaged
``sports`` dataset config applies: image 4096-d, text 384-d): ``--users`` users with at least
three interactions each, every item interacted with at least once, ``--interactions`` rows in
all (popularity-skewed items), a random per-user 8:1:1 split; features are uniform noise.

Reported (one process, ``OMP_NUM_THREADS`` threads):

- ``model_build_s``: the model's construction, i.e. the two *original* kNN graphs (k = 10,
  cosine weights) over the raw 4096-d and 384-d features, chunked (not cached: a fresh folder);
- ``first_batch_s``: the epoch's first batch, which learns the item graph (projections, two
  kNN searches over 63k x 64, gradient through the selected edges) and steps Adam over the
  trainable raw tables; ``batch_s``: the mean of the following batches (graph reused, detached);
- ``epoch_s``: first batch + mean batch x (batches - 1) (``extrapolated`` with ``--max-batches``);
- ``eval_s``: one full-sort evaluation of the valid split (rebuilds the learned graph);
- ``peak_rss_mb``: VmHWM of the process from the dataset load on (the feature generation is
  excluded: the peak is reset after it).

    OMP_NUM_THREADS=1 python benchmarks/lattice_scale.py --max-batches 20
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.sports_speed import reset_peak_rss, rss_mb  # noqa: E402
from recbole_mm.config import Config  # noqa: E402
from recbole_mm.data import create_dataset, data_preparation  # noqa: E402
from recbole_mm.data.mmrec_format import write_mmrec_inter  # noqa: E402
from recbole_mm.data.synthetic import split_labels  # noqa: E402
from recbole_mm.trainer import get_trainer  # noqa: E402
from recbole_mm.utils import get_model  # noqa: E402


def make_catalogue(n_users, n_items, n_interactions, image_dim, text_dim, seed=0):
    """A temporary MMRec folder ``<root>/sports`` with the generated catalogue; returns root."""
    rng = np.random.default_rng(seed)
    n_extra = max(n_interactions - 3 * n_users, n_items)
    users = np.concatenate([np.repeat(np.arange(n_users), 3), rng.integers(0, n_users, n_extra)])
    popularity = rng.pareto(1.5, n_items) + 1.0
    items = np.concatenate([rng.permutation(n_items)[:n_items],
                            rng.choice(n_items, len(users) - n_items, p=popularity / popularity.sum())])
    items = items[rng.permutation(len(items))]
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)  # one row per (user, item)
    users, items = pairs[:, 0], pairs[:, 1]
    labels = split_labels(rng, users, np.bincount(users, minlength=n_users))
    root = tempfile.mkdtemp(prefix="bench-lattice-")
    folder = os.path.join(root, "sports")
    os.makedirs(folder)
    write_mmrec_inter(os.path.join(folder, "sports.inter"), users, items, labels)
    image = np.lib.format.open_memmap(os.path.join(folder, "image_feat.npy"), mode="w+", dtype=np.float32,
                                      shape=(n_items, image_dim))
    for start in range(0, n_items, 4096):  # written in blocks: the generator never holds 1 GB
        stop = min(start + 4096, n_items)
        image[start:stop] = rng.random((stop - start, image_dim), dtype=np.float32)
    image.flush()
    del image
    np.save(os.path.join(folder, "text_feat.npy"), rng.standard_normal((n_items, text_dim), dtype=np.float32))
    return root, len(users)


def run(root, model_name, max_batches, device, dims):
    config = Config(model_name, "sports", config_dict={
        "data_path": root, "checkpoint_dir": os.path.join(root, "saved"), "state": "WARNING",
        "device": device, "use_gpu": device != "cpu", "modality_dims": dims})
    reset_peak_rss()
    start = time.perf_counter()
    dataset = create_dataset(config)
    train, valid, _ = data_preparation(config, dataset)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    model = get_model(model_name)(config, train._dataset).to(config["device"])
    build_s = time.perf_counter() - start
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    after_build_mb = rss_mb("VmHWM:")

    model.train()
    model.pre_epoch_processing()
    seconds = []
    for index, batch in enumerate(train):
        if max_batches and index == max_batches:
            break
        start = time.perf_counter()
        trainer.optimizer.zero_grad()
        model.calculate_loss(batch.to(model.device)).backward()
        trainer.optimizer.step()
        seconds.append(time.perf_counter() - start)
    n_batches = len(train)
    mean_rest = float(np.mean(seconds[1:])) if len(seconds) > 1 else 0.0
    epoch_s = seconds[0] + mean_rest * (n_batches - 1)
    after_train_mb = rss_mb("VmHWM:")

    start = time.perf_counter()
    result = trainer.evaluate(valid, load_best_model=False)
    eval_s = time.perf_counter() - start
    return {
        "model": model_name, "users": dataset.user_num - 1, "items": dataset.item_num - 1,
        "train_rows": train._dataset.inter_num, "threads": torch.get_num_threads(),
        "load_and_split_s": round(load_s, 1), "model_build_s": round(build_s, 1),
        "first_batch_s": round(seconds[0], 2), "batch_s": round(mean_rest, 3), "batches": n_batches,
        "epoch_s": round(epoch_s, 1),
        "epoch_timing": f"extrapolated from {len(seconds)} batches" if len(seconds) < n_batches else "full epoch",
        "eval_s": round(eval_s, 1), "valid_recall@20": float(result["recall@20"]),
        "peak_rss_mb_after_build": round(after_build_mb), "peak_rss_mb_after_training": round(after_train_mb),
        "peak_rss_mb": round(rss_mb("VmHWM:")),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="LATTICE")
    parser.add_argument("--users", type=int, default=60000)
    parser.add_argument("--items", type=int, default=63000)
    parser.add_argument("--interactions", type=int, default=500000)
    parser.add_argument("--image-dim", type=int, default=4096)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--max-batches", type=int, default=None, help="time only the first N batches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    start = time.perf_counter()
    root, rows = make_catalogue(args.users, args.items, args.interactions, args.image_dim, args.text_dim)
    print(f"generated {rows} interactions, {args.items} items in {time.perf_counter() - start:.1f}s", flush=True)
    try:
        dims = {"image": args.image_dim, "text": args.text_dim}
        print(run(root, args.model, args.max_batches, args.device, dims), flush=True)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
