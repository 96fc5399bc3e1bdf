"""One process against several: accuracy and seconds per epoch (results/distributed.md).

    python benchmarks/distributed.py --models VBPR FREEDOM LIRDRec --epochs 10 --seeds 2020 2021 2022

For each model and seed it trains on the bundled synthetic dataset once in one process and once
in ``--nproc`` gloo processes on the CPU (NCCL where ``--gpu``), with the same config, and
records valid/test Recall@20 (best valid epoch), the mean seconds of a training epoch and of a
validation pass (rank 0's clock). The spread of the one-process metric over seeds is the noise
a distributed run is judged against: a distributed run sees the same initial weights (rank 0's,
seeded as one process seeds them) but another order of batches and other negatives, which is
what another seed changes too.
"""
import argparse
import json
import os
import socket
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(local_rank, model, config_dict, nproc, port, queue):
    sys.path.insert(0, REPO_ROOT)
    sys.argv = [sys.argv[0]]
    import torch.distributed as dist

    import recbole_mm  # noqa: F401
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.trainer import MultiModalTrainer

    seconds = {"train": [], "valid": []}
    train_epoch, valid_epoch = MultiModalTrainer._train_epoch, MultiModalTrainer._valid_epoch

    def timed(kind, method):
        def run(self, *args, **kwargs):
            clock = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                seconds[kind].append(time.perf_counter() - clock)
        return run

    MultiModalTrainer._train_epoch = timed("train", train_epoch)
    MultiModalTrainer._valid_epoch = timed("valid", valid_epoch)
    config_dict = dict(config_dict)
    if nproc > 1:
        config_dict.update(local_rank=local_rank, world_size=nproc, nproc=nproc, offset=0, ip="127.0.0.1", port=port)
    try:
        result = run_recbole_mm(model, "synthetic", None, config_dict)
        if local_rank == 0:
            queue.put({"valid_recall@20": float(result["best_valid_result"]["recall@20"]),
                       "test_recall@20": float(result["test_result"]["recall@20"]),
                       "train_s": sum(seconds["train"]) / max(len(seconds["train"]), 1),
                       "valid_s": sum(seconds["valid"]) / max(len(seconds["valid"]), 1),
                       "epochs": len(seconds["train"])})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _digest(model):
    import hashlib

    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _smoke_worker(local_rank, models, root, nproc, port, queue):
    """Every model for 2 epochs on the small synthetic dataset; reports each rank's weight digest."""
    sys.path.insert(0, REPO_ROOT)
    sys.argv = [sys.argv[0]]
    import torch.distributed as dist

    import recbole_mm  # noqa: F401
    from recbole_mm.quick_start import run_recbole_mm

    ranks = dict(local_rank=local_rank, world_size=nproc, nproc=nproc, offset=0, ip="127.0.0.1", port=port)
    config = {"data_path": os.path.join(root, "data"), "checkpoint_dir": root, "state": "WARNING", "epochs": 2,
              "synthetic_generator": {"seed": 7, "n_users": 300, "n_items": 200, "mean_interactions": 12}}
    try:
        for model in models:
            try:
                result = run_recbole_mm(model, "synthetic", None, {**config, **ranks})
                queue.put((model, local_rank, _digest(result["trainer"].model),
                           float(result["test_result"]["recall@20"])))
            except Exception as error:  # reported, then the run stops (the other ranks would wait forever)
                queue.put((model, local_rank, f"error: {error!r}"[:300], None))
                raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def smoke(models, nproc, root):
    """Which models train under ``nproc`` ranks with every rank holding the same weights."""
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_smoke_worker, args=(models, root, nproc, free_port(), queue), nprocs=nproc, join=True)
    finally:
        reports = {}
        while not queue.empty():
            model, rank, digest, recall = queue.get()
            reports.setdefault(model, {})[rank] = (digest, recall)
        print("| model | ranks agree on the weights | test Recall@20 (2 epochs) |\n|---|---|---|")
        for model in models:
            ranks = reports.get(model, {})
            digests = {digest for digest, _ in ranks.values()}
            agree = len(ranks) == nproc and len(digests) == 1 and not next(iter(digests)).startswith("error")
            recall = ranks.get(0, (None, None))[1]
            print(f"| {model} | {'yes' if agree else 'NO: ' + str(digests)} | "
                  f"{'-' if recall is None else f'{recall:.4f}'} |")


def run(model, config_dict, nproc):
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(model, config_dict, nproc, free_port(), queue), nprocs=nproc, join=True)
    return queue.get()


def _mean_std(values):
    import statistics

    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(rows, command):
    """The markdown table of results/distributed.md from the jsonl rows."""
    import statistics

    lines = ["| model | procs | valid Recall@20 | test Recall@20 | mean abs gap to 1 proc, same seed (valid / test) "
             "| train s/epoch | valid s/pass |", "|---|---|---|---|---|---|---|"]
    models = list(dict.fromkeys(row["model"] for row in rows))
    for model in models:
        single = {row["seed"]: row for row in rows if row["model"] == model and row["nproc"] == 1}
        for nproc in sorted({row["nproc"] for row in rows if row["model"] == model}):
            mine = [row for row in rows if row["model"] == model and row["nproc"] == nproc]
            cells = []
            for key in ("valid_recall@20", "test_recall@20"):
                mean, std = _mean_std([row[key] for row in mine])
                cells.append(f"{mean:.4f} ± {std:.4f}")
            if nproc == 1:
                gap = "-"
            else:
                gaps = [[abs(row[key] - single[row["seed"]][key]) for row in mine if row["seed"] in single]
                        for key in ("valid_recall@20", "test_recall@20")]
                gap = " / ".join(f"{statistics.mean(values):.4f}" for values in gaps)
            train = statistics.median(row["train_s"] for row in mine)
            valid = statistics.median(row["valid_s"] for row in mine)
            cells += [gap, f"{train:.2f}", f"{valid:.2f}"]
            lines.append(f"| {model} | {nproc} | " + " | ".join(cells) + " |")
    seeds = sorted({row["seed"] for row in rows})
    return "\n".join(lines) + f"\n\nmean ± standard deviation over seeds {seeds}; seconds: median over seeds " \
        f"of the mean epoch. Command: `{command}`\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["VBPR", "FREEDOM", "LIRDRec"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="ranks on GPUs (NCCL); CPUs (gloo) otherwise")
    parser.add_argument("--workdir", default=os.path.join(REPO_ROOT, "results", "saved", "distributed"))
    parser.add_argument("--jsonl", default=os.path.join(REPO_ROOT, "results", "distributed.jsonl"))
    parser.add_argument("--summary", action="store_true", help="print the markdown table of --jsonl and exit")
    parser.add_argument("--smoke", action="store_true",
                        help="every plugin model (or --models) 2 epochs under --nproc ranks on a small dataset")
    args = parser.parse_args()
    if args.smoke:
        sys.path.insert(0, REPO_ROOT)
        from recbole_mm.utils import available_models

        models = args.models if "--models" in sys.argv else available_models(plugin=True)
        os.makedirs(args.workdir, exist_ok=True)
        smoke(models, args.nproc, args.workdir)
        return
    if args.summary:
        with open(args.jsonl) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        print(summary(rows, "python benchmarks/distributed.py --models VBPR FREEDOM LIRDRec --epochs 5 "
                            "--seeds 2020 2021 2022 2023"))
        return
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)
    for model in args.models:
        for seed in args.seeds:
            for nproc in (1, args.nproc):
                config = {"seed": seed, "epochs": args.epochs, "stopping_step": args.epochs, "state": "WARNING",
                          "data_path": os.path.join(REPO_ROOT, "dataset"), "checkpoint_dir": args.workdir,
                          "use_gpu": args.gpu, "gpu_id": ",".join(map(str, range(nproc))) if args.gpu else ""}
                clock = time.perf_counter()
                row = {"model": model, "seed": seed, "nproc": nproc, "epochs_asked": args.epochs,
                       **run(model, config, nproc), "wall_s": round(time.perf_counter() - clock, 1),
                       "device": "gpu" if args.gpu else "cpu"}
                print(json.dumps(row), flush=True)
                with open(args.jsonl, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
