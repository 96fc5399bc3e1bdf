"""VLIF's training cost on the Sports graph: ours (code profile, the InfoNCE schedule before
and after ``fused_infonce``) beside the public code (dangkh/VIRAL), same data, one thread each,
all sides started at the same time.

    python benchmarks/vlif_sports_speed.py --data <Sports folder> --reference <dangkh/VIRAL checkout> --batches 2 \\
        --out results/vlif_sports_speed.md

The data folder holds the real ``sports.inter`` (MMRec layout) with ``image_feat.npy`` /
``text_feat.npy``; VLIF's visual modality is the 384-d MiniLM encoding of VLM descriptions,
which is made here from the image features by the fixed projection of
``compare_reference.fixed_width_features`` (the descriptions themselves are not available), and
the public code's ``user_graph_dict.npy`` by ``compare_reference.user_graph_dict``. A full epoch
is too long on this machine: each side times its first ``--batches`` training batches (the
user graph drawn, the optimiser stepping, as in training) and the epoch time is their mean
times the epoch's batch count (extrapolated, and marked so).

Sides (``--sides``): ``ours:<profile>:<fused|autograd>`` with profile ``code`` (redu2, the
default yaml) or ``master`` (properties/vlif_master.yaml), and ``reference:<branch>``.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare_reference as compare  # noqa: E402

PROFILES = {"code": [], "master": [os.path.join(REPO, "properties", "vlif_master.yaml")]}


def prepare_folder(source, root):
    """``root/sports/``: the source's sports.inter and features linked, the 384-d visual
    (VLM-description width) and text feature files, and the public code's user graph
    dictionary; returns {"image": file, "text": file} (also kept in ``root/features.json``)."""
    folder = os.path.join(root, "sports")
    os.makedirs(folder, exist_ok=True)
    for name in ("sports.inter", "image_feat.npy", "text_feat.npy"):
        if not os.path.exists(os.path.join(folder, name)):
            os.symlink(os.path.join(os.path.abspath(source), name), os.path.join(folder, name))
    names = compare.fixed_width_features(folder, (384, 384), 999)
    graph = os.path.join(folder, "user_graph_dict.npy")
    if not os.path.exists(graph):
        frame = pd.read_csv(os.path.join(folder, "sports.inter"), sep="\t", usecols=["userID", "itemID", "x_label"])
        train = frame[frame.x_label == 0]
        np.save(graph, compare.user_graph_dict(train.userID.to_numpy(), train.itemID.to_numpy(),
                                               int(frame.userID.max()) + 1), allow_pickle=True)
    with open(os.path.join(root, "features.json"), "w") as handle:
        json.dump(names, handle)
    return names


def feature_files(root):
    with open(os.path.join(root, "features.json")) as handle:
        return json.load(handle)


def receptive_field(folder, batch_sizes=(1024, 2048), seed=0, user_graph_k=40):
    """Share of the catalogue a batch's BPR terms read (lower bound: without the kNN item
    graph, which only widens it): a batch item's output after :math:`x + \\hat A x + \\hat A^2 x`
    reads the items two hops away, a batch user's reads its own items, and the user graph adds
    its ``user_graph_k`` neighbours' items. Returns {batch size: share}."""
    import scipy.sparse as sp

    frame = pd.read_csv(os.path.join(folder, "sports.inter"), sep="\t", usecols=["userID", "itemID", "x_label"])
    train = frame[frame.x_label == 0]
    n_users, n_items = int(frame.userID.max()) + 1, int(frame.itemID.max()) + 1
    incidence = sp.csr_matrix((np.ones(len(train)), (train.userID, train.itemID)), shape=(n_users, n_items))
    graph = np.load(os.path.join(folder, "user_graph_dict.npy"), allow_pickle=True).item()
    rng = np.random.default_rng(seed)
    shares = {}
    for size in batch_sizes:
        rows = rng.choice(len(train), size, replace=False)
        users = train.userID.to_numpy()[rows]
        items = np.zeros(n_items, bool)
        items[train.itemID.to_numpy()[rows]] = True
        items[rng.integers(0, n_items, size)] = True  # negatives
        item_users = np.asarray(incidence[:, items].sum(1)).ravel() > 0
        read = items | (np.asarray(incidence[item_users].sum(0)).ravel() > 0)
        neighbours = set(users.tolist())
        for user in set(users.tolist()):
            neighbours.update(graph[user][0][:user_graph_k])
        chosen = np.zeros(n_users, bool)
        chosen[list(neighbours)] = True
        read |= np.asarray(incidence[chosen].sum(0)).ravel() > 0
        shares[size] = float(read.mean())
    return shares


# ----------------------------------------------------------------------------- one side
def time_batches(model, optimizer, batches, n_batches, calculate_loss):
    seconds, losses = [], []
    model.train()
    model.pre_epoch_processing()
    for index, batch in enumerate(batches):
        if index == n_batches:
            break
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = calculate_loss(batch)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    return seconds, losses


def run_ours(root, profile, schedule, n_batches):
    import torch

    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]
    sys.path.insert(0, REPO)
    from recbole.utils import init_seed

    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset, data_preparation
    from recbole_mm.utils import get_model

    start = time.perf_counter()
    config = Config("VLIF", "sports", PROFILES[profile], {
        "data_path": root, "checkpoint_dir": os.path.join(root, "saved"), "state": "WARNING",
        "fused_infonce": schedule == "fused", "seed": 999, "synthetic_generator": None,
        "modality_files": feature_files(root), "modality_dims": None})
    init_seed(config["seed"], True)
    train = data_preparation(config, create_dataset(config))[0]
    model = get_model("VLIF")(config, train._dataset)
    setup = time.perf_counter() - start
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    seconds, losses = time_batches(model, optimizer, train, n_batches, model.calculate_loss)
    return {"batches_per_epoch": len(train), "setup_s": setup, "batch_s": seconds, "losses": losses}


def run_reference(reference, root, branch, n_batches):
    import reference_runner

    reference_runner.install_shims()
    import torch

    workdir = tempfile.mkdtemp(prefix="vlif_ref_")
    _, src = compare.export_reference(reference, workdir, branch)
    names = feature_files(root)
    compare.write_mmrec_dataset_yaml(src, "sports", names["image"], names["text"])
    os.chdir(os.path.dirname(src))  # VIRAL reads src/configs/ from the directory above src/
    sys.path.insert(0, src)
    from utils.configurator import Config
    from utils.dataloader import TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, init_seed

    start = time.perf_counter()
    config = Config("VLIF", "sports", {"gpu_id": 0, "use_gpu": False, "data_path": root, "seed": 999,
                                       "reg_weight": 0.001, "learning_rate": 0.0001})
    for key in config["hyper_parameters"]:
        if isinstance(config[key], list):
            config[key] = config[key][0]
    init_seed(config["seed"])
    dataset = RecDataset(config)
    str(dataset)  # VIRAL's RecDataset sets inter_num in __str__, which its quick_start logs
    train = dataset.split()[0]
    str(train)
    loader = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
    loader.pretrain_setup()
    model = reference_runner.cuda_parity(get_model)("VLIF")(config, loader).to(config["device"])
    setup = time.perf_counter() - start
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    seconds, losses = time_batches(model, optimizer, loader, n_batches, model.calculate_loss)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"batches_per_epoch": len(loader), "setup_s": setup, "batch_s": seconds, "losses": losses}


def child(args):
    kind, *rest = args.side.split(":")
    result = run_reference(args.reference, args.root, rest[0], args.batches) if kind == "reference" else \
        run_ours(args.root, rest[0], rest[1], args.batches)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver
def label(side):
    kind, *rest = side.split(":")
    if kind == "reference":
        return f"dangkh/VIRAL VLIF ({rest[0]})"
    return f"recbole_mm VLIF, {rest[0]} profile, InfoNCE {'gradients in the forward pass' if rest[1] == 'fused' else 'by autograd'}"


def driver(args):
    root = args.root or tempfile.mkdtemp(prefix="vlif_sports_")
    widths = prepare_folder(args.data, root)
    processes = {}
    for side in args.sides:
        python = compare.DEFAULT_REF_PYTHON if side.startswith("reference") else sys.executable
        log = os.path.join(root, side.replace(":", "_") + ".log")
        command = [python, os.path.abspath(__file__), "--child", side, "--root", root + os.sep,
                   "--batches", str(args.batches)] + (["--reference", args.reference] if args.reference else [])
        processes[side] = compare.start(command, HERE, log)
    outcome = compare.wait_all(processes, args.timeout)
    rows = []
    for side in args.sides:
        with open(os.path.join(root, side.replace(":", "_") + ".log"), errors="replace") as handle:
            text = handle.read()
        found = [line for line in text.splitlines() if line.startswith("RESULT ")]
        code, rss = outcome[side]
        if not found:
            print(f"--- {side} failed ({code}):\n" + "\n".join(text.splitlines()[-20:]), file=sys.stderr)
            rows.append({"side": label(side), "status": f"exit {code}", "peak_rss_mb": rss / 1024})
            continue
        result = json.loads(found[-1][7:])
        per_batch = float(np.mean(result["batch_s"]))
        rows.append({"side": label(side), "status": "ok", "batches_timed": len(result["batch_s"]),
                     "s_per_batch": per_batch, "batches_per_epoch": result["batches_per_epoch"],
                     "s_per_epoch_extrapolated": per_batch * result["batches_per_epoch"],
                     "setup_s": result["setup_s"], "first_loss": result["losses"][0],
                     "peak_rss_mb": rss / 1024, "batch_s": result["batch_s"]})
    report(args, rows, widths)


def report(args, rows, widths):
    lines = ["| side | batches timed | s / batch | batches / epoch | s / epoch (extrapolated) | model build s | "
             "first loss | peak RSS MB | status |", "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for row in rows:
        lines.append(f"| {row['side']} | {row.get('batches_timed', '-')} | {fmt(row.get('s_per_batch'), '.1f')} | "
                     f"{row.get('batches_per_epoch', '-')} | {fmt(row.get('s_per_epoch_extrapolated'), ',.0f')} | "
                     f"{fmt(row.get('setup_s'), '.1f')} | {fmt(row.get('first_loss'), '.4f')} | "
                     f"{fmt(row.get('peak_rss_mb'), '.0f')} | {row['status']} |")
    table = "\n".join(lines)
    print(table)
    if not args.out:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = compare.portable("python benchmarks/vlif_sports_speed.py " + " ".join(sys.argv[1:]))
    with open(args.out, "a") as handle:
        handle.write(f"\n## {stamp}\n\n```\n{command}\n```\n\nMachine: {platform.node()}, {os.cpu_count()} CPUs "
                     f"(shared), one thread per side, all sides at once; features {widths}.\n\n{table}\n")
    with open(os.path.splitext(args.out)[0] + ".jsonl", "a") as handle:
        handle.write(compare.portable(json.dumps({"time": stamp, "command": sys.argv[1:], "rows": rows})) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MMRec-layout folder with sports.inter and the feature files")
    parser.add_argument("--reference", default=None, help="dangkh/VIRAL checkout or bare git dir (for reference sides)")
    parser.add_argument("--root", default=None, help="working folder (kept; default a new temporary one)")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--sides", nargs="+", default=["ours:code:fused", "ours:master:fused", "ours:master:autograd",
                                                      "reference:master"])
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--receptive-field", action="store_true",
                        help="only print the share of items a batch's BPR terms read")
    parser.add_argument("--child", dest="side", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.reference and any(side.startswith("reference") for side in args.sides):
        parser.error("--reference is needed for a reference side (or give --sides without one)")
    if args.receptive_field:
        root = args.root or tempfile.mkdtemp(prefix="vlif_sports_")
        prepare_folder(args.data, root)
        print(json.dumps(receptive_field(os.path.join(root, "sports"))))
    elif args.side:
        child(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
