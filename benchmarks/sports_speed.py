"""Speed and memory on a real interaction graph.

1. Imports ``sports.inter`` (``--inter``; Amazon Sports, MMRec layout: 35,598 users, 18,357 items,
   296,337 rows) with *generated* features of the real shapes (image 4096-d, text 384-d;
   the real feature files are not available here), then trains each model of ``--models``
   and reports seconds per training epoch, per full-sort evaluation of the valid split, and
   the peak resident memory of the process while that model was built and trained.
2. Builds the kNN item-item graph (k=10) for ``--knn-items`` items x 4096-d features and
   reports the peak resident memory above the features themselves.

    python benchmarks/sports_speed.py --models VBPR LIRDRec FREEDOM --skip-knn
    python benchmarks/sports_speed.py --models DRAGON VLIF --image-dim 384 --max-batches 10 --skip-knn
    python benchmarks/sports_speed.py --models VBPR --skip-knn --set guider=true
    python benchmarks/sports_speed.py --models VBPR --skip-knn --epochs 1 --set guider=true noise_ratio=0.1

Under ``guider=true`` the teacher's pre-training (``guider_teacher_pretrain_epochs``) is timed
apart from the epochs, and the last AMSC calibration (I_false's size, and its precision and
recall on the injected pairs under ``noise_ratio``) is printed.

``--image-dim 384`` gives the image modality the width of VLIF's VLM-enriched features
(MiniLM-encoded descriptions). ``--max-batches N`` times the first N training batches of
each epoch and reports s/epoch as their mean times the number of batches (marked
``extrapolated``), for models whose full epoch on this machine takes too long.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_mm.config import Config  # noqa: E402
from recbole_mm.data import create_dataset, data_preparation  # noqa: E402
from recbole_mm.data.graphs import knn_graph  # noqa: E402
from recbole_mm.trainer import get_trainer  # noqa: E402
from recbole_mm.utils import get_model  # noqa: E402
from truncated_loader import truncated  # noqa: E402


def rss_mb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


CLIP_DIM = 512
# config overrides that add the generated CLIP table to the folder's image and text files
CLIP_FILES = {"modality_files": {"text": "text_feat.npy", "image": "image_feat.npy", "clip": "clip_feat.npy"},
              "modality_dims": {"text": 384, "image": 4096, "clip": CLIP_DIM}}


def make_sports_folder(inter_path, image_dim=4096, root=None, name="sports"):
    """An MMRec folder ``<root>/<name>``: the real interaction file (``sports.inter``) with
    generated image (``image_dim``, uniform) and 384-d text (Gaussian) features, seed 0, and a
    512-d ``clip_feat.npy`` (unit rows) for the models that score a CLIP embedding (read only
    where a config lists it in ``modality_files``: :data:`CLIP_FILES`).
    ``root`` defaults to a new temporary directory; an existing complete folder is kept as it is
    (several benchmark processes can share one). Returns ``root``."""
    root = root or tempfile.mkdtemp(prefix="bench-sports-")
    folder = os.path.join(root, name)
    files = [os.path.join(folder, f) for f in (f"{name}.inter", "image_feat.npy", "text_feat.npy")]
    if all(os.path.exists(f) for f in files):
        return root
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
    shutil.copy(inter_path, os.path.join(staging, f"{name}.inter"))
    n_items = int(np.loadtxt(inter_path, skiprows=1, usecols=1, dtype=np.int64).max()) + 1
    rng = np.random.default_rng(0)
    np.save(os.path.join(staging, "image_feat.npy"), rng.random((n_items, image_dim), dtype=np.float32))
    np.save(os.path.join(staging, "text_feat.npy"), rng.standard_normal((n_items, 384), dtype=np.float32))
    clip = rng.standard_normal((n_items, CLIP_DIM), dtype=np.float32)
    np.save(os.path.join(staging, "clip_feat.npy"), clip / np.linalg.norm(clip, axis=1, keepdims=True))
    try:
        os.rename(staging, folder)  # atomic: another process sees the whole folder or none
    except OSError:  # another process made it first
        shutil.rmtree(staging)
    return root


def part_epoch_seconds(trainer, loader, epoch, max_batches):
    """One epoch's seconds extrapolated from the trainer's own epoch over the loader's first
    ``max_batches`` batches: the batch phases scale by (batches / max_batches); GUIDER's
    calibration, once per epoch whatever the batch count, is counted once. (The trainer's own
    epoch, so that GUIDER's teacher and distillation are in it: timing bare
    ``calculate_loss`` calls measured the plain student under ``guider=true``.)"""
    n_batches = len(loader)
    before = len(getattr(trainer, "epoch_seconds", []))
    start = time.perf_counter()
    trainer._train_epoch(truncated(loader, max_batches), epoch)
    if trainer.model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    phases = getattr(trainer, "epoch_seconds", [])
    once = phases[-1].get("calibration", 0.0) if len(phases) > before else 0.0
    return (seconds - once) * n_batches / min(max_batches, n_batches) + once


def bench_model(root, model_name, epochs, device, max_batches=None, overrides=None):
    config = Config(model_name, "sports", config_dict={
        "data_path": root, "checkpoint_dir": os.path.join(root, "saved"), "epochs": epochs,
        "state": "WARNING", "device": device, "use_gpu": device != "cpu", **(overrides or {})})
    reset_peak_rss()
    start = time.perf_counter()
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model = get_model(model_name)(config, train._dataset).to(config["device"])
    build_seconds = time.perf_counter() - start
    trainer = get_trainer(config["MODEL_TYPE"], model_name, guider=bool(config["guider"]))(config, model)
    setup = getattr(trainer, "_setup", None)  # GUIDER: teacher and hash fit, once per run
    start = time.perf_counter()
    if setup:
        setup(train)
    trainer_setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if hasattr(trainer, "pretrain_teacher"):  # GUIDER: guider_teacher_pretrain_epochs, once per run
        trainer.pretrain_teacher(train)
    pretrain_seconds = time.perf_counter() - start
    epoch_seconds, eval_seconds = [], []
    for epoch in range(epochs):
        model.train()
        if max_batches:
            epoch_seconds.append(part_epoch_seconds(trainer, train, epoch, max_batches))
        else:
            start = time.perf_counter()
            trainer._train_epoch(train, epoch)
            epoch_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = trainer.evaluate(valid, load_best_model=False)
        eval_seconds.append(time.perf_counter() - start)
    return {
        "model": model_name, "users": dataset.user_num - 1, "items": dataset.item_num - 1,
        "train_rows": train._dataset.inter_num, "load_and_split_s": round(load_seconds, 2),
        "model_build_s": round(build_seconds, 2), "trainer_setup_s": round(trainer_setup_seconds, 2), "epoch_s": round(float(np.median(epoch_seconds)), 2),
        "full_sort_eval_s": round(float(np.median(eval_seconds)), 2), "peak_rss_mb": round(rss_mb("VmHWM:")),
        "valid_recall@20": float(result["recall@20"]),
        "epoch_timing": f"extrapolated from {max_batches} batches" if max_batches else "full epoch",
        "trainer": type(trainer).__name__,
        "phase_seconds": getattr(trainer, "epoch_seconds", None),
        "teacher_pretrain_s": round(pretrain_seconds, 2) if hasattr(trainer, "pretrain_teacher") else None,
        "last_calibration": (trainer.calibration_history or [None])[-1] if hasattr(trainer, "calibration_history")
        else None,
        "kd_history": getattr(trainer, "kd_history", None),
    }


def bench_knn(n_items, dim, k):
    features = torch.from_numpy(np.random.default_rng(1).random((n_items, dim), dtype=np.float32))
    baseline = rss_mb("VmRSS:")
    reset_peak_rss()
    start = time.perf_counter()
    graph = knn_graph(features, k)
    seconds = time.perf_counter() - start
    peak = rss_mb("VmHWM:")
    return {"items": n_items, "dim": dim, "k": k, "features_mb": features.numel() * 4 / 2 ** 20,
            "seconds": seconds, "peak_above_features_mb": peak - baseline, "edges": graph._nnz()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_inter = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset", "sports",
                                 "sports.inter")
    parser.add_argument("--inter", default=default_inter,
                        help="MMRec's sports.inter (default: dataset/sports/sports.inter of this repository)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--knn-items", type=int, default=50000)
    parser.add_argument("--knn-dim", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["VBPR"])
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--image-dim", type=int, default=4096)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides (yaml values), e.g. fusion_tokens=4")
    parser.add_argument("--skip-knn", action="store_true")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}", flush=True)
    if not args.skip_knn:
        print("knn:", bench_knn(args.knn_items, args.knn_dim, 10), flush=True)
    if not args.skip_models:
        if not os.path.isfile(args.inter):
            parser.error(f"{args.inter} not found: pass --inter with MMRec's sports.inter (folder 'sports' of "
                         "https://github.com/enoche/MMRec's data)")
        root = make_sports_folder(args.inter, args.image_dim)
        overrides = {"modality_dims": {"text": 384, "image": args.image_dim}}
        overrides.update({key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)})
        for model_name in args.models:
            result = bench_model(root, model_name, args.epochs, args.device, args.max_batches, overrides)
            print("sports:", result, flush=True)
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
