"""Resident memory after each phase of one run, ours or MMRec's, to say where a peak-RSS gap
between the two comes from (``compare_reference.py`` gives only the peak of the whole run).

    python benchmarks/rss_phases.py ours --model LGMRec --data <folder>/sports --batches 3
    <reference python> benchmarks/rss_phases.py mmrec --src <MMRec checkout>/src --model LGMRec \\
        --dataset sports --set keep_rate=0.4 alpha=0.6 --batches 3

Each side replays its own start-up step by step (ours: dataset, the data splits and loaders,
model, trainer; MMRec: ``quick_start``'s dataset, split, loaders, model, trainer), then trains
``--batches`` batches (the first one alone, then the rest) and runs one valid evaluation, and
prints the RSS (``VmRSS``) and the peak so far (``VmHWM``) after each step. One CPU thread.
``--data`` is a folder in MMRec's layout (``<name>.inter``, ``image_feat.npy``,
``text_feat.npy``), e.g. the Sports folder of ``sports_speed.py``; MMRec reads
``<src>/../data/<dataset>/``.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def report(step):
    """One line: the step, the resident set now and its peak so far (MB)."""
    with open("/proc/self/status") as handle:
        status = dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)
    mb = {key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}
    print(f"{step:24s} RSS {mb['VmRSS']:8.0f} MB   peak {mb['VmHWM']:8.0f} MB", flush=True)


def ours(args):
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(HERE))
    from recbole.utils import init_seed

    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset, data_preparation
    from recbole_mm.trainer import get_trainer
    from recbole_mm.utils import get_model
    from truncated_loader import truncated

    report("imports")
    folder = os.path.abspath(args.data)
    config = Config(get_model(args.model), os.path.basename(folder), None, {
        "data_path": os.path.dirname(folder), "state": "WARNING", "eval_protocol": "mmrec", "seed": args.seed,
        "synthetic_generator": None, "modality_files": {"image": "image_feat.npy", "text": "text_feat.npy"},
        "modality_dims": None, "show_progress": False, **args.overrides})
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    report("dataset")
    train, valid, _ = data_preparation(config, dataset)
    report("splits and loaders")
    model = get_model(args.model)(config, train._dataset)
    report("model")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    report("trainer")
    train_batches(trainer._train_epoch, train, args.batches, truncated)
    trainer.evaluate(valid, load_best_model=False)
    report("valid evaluation")


def mmrec(args):
    import torch

    torch.set_num_threads(1)
    import reference_runner

    reference_runner.install_shims()
    src = os.path.abspath(args.src)
    os.chdir(src)
    sys.path.insert(0, src)
    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.logger import init_logger
    from utils.utils import get_model, get_trainer, init_seed

    from truncated_loader import truncated

    report("imports")
    config = Config(args.model, args.dataset, {"use_gpu": False, "seed": [args.seed]}, False)
    init_logger(config)
    dataset = RecDataset(config)
    str(dataset)  # MMRec's loaders read inter_num, which its __str__ sets
    report("dataset")
    splits = dataset.split()
    for split in splits:
        str(split)
    train = TrainDataLoader(config, splits[0], batch_size=config["train_batch_size"], shuffle=True)
    valid = EvalDataLoader(config, splits[1], additional_dataset=splits[0], batch_size=config["eval_batch_size"])
    EvalDataLoader(config, splits[2], additional_dataset=splits[0], batch_size=config["eval_batch_size"])
    report("splits and loaders")
    for key in config["hyper_parameters"]:  # quick_start's first combination
        config[key] = (config[key] or [None])[0]
    for key, value in args.overrides.items():
        config[key] = value
    config["seed"] = args.seed
    init_seed(args.seed)
    train.pretrain_setup()
    model = get_model(config["model"])(config, train).to(config["device"])
    report("model")
    trainer = get_trainer()(config, model, False)
    report("trainer")
    train_batches(trainer._train_epoch, train, args.batches, truncated)
    trainer._valid_epoch(valid)
    report("valid evaluation")


def train_batches(train_epoch, loader, batches, truncated):
    """The first batch alone, then ``batches - 1`` more, each followed by a report."""
    train_epoch(truncated(loader, 1), 0)
    report("1 batch")
    if batches > 1:
        train_epoch(truncated(loader, batches - 1), 1)
        report(f"{batches} batches")


def main(argv=None):
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=("ours", "mmrec"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="ours: the dataset folder (MMRec layout)")
    parser.add_argument("--src", help="mmrec: MMRec's src/ (reads ../data/<dataset>/)")
    parser.add_argument("--dataset", default="sports", help="mmrec: the dataset's name")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (yaml values)")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--seed", type=int, default=999)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's and MMRec's configs read the command line
    args.overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    report("start")
    if args.side == "ours":
        if not args.data:
            parser.error("ours needs --data")
        ours(args)
    else:
        if not args.src:
            parser.error("mmrec needs --src")
        mmrec(args)


if __name__ == "__main__":
    main()
