#!/usr/bin/env python
"""Train and evaluate a model with recbole_mm, with RecBole's command-line flags.

    python run_recbole_mm.py --model=VBPR --dataset=synthetic
    python run_recbole_mm.py --model=LightGCN --dataset=baby --config_files=properties/mmrec_baby.yaml
    python run_recbole_mm.py --model=VBPR --dataset=synthetic --learning_rate=0.01 --epochs=20

Any other ``--key=value`` overrides that config key (RecBole reads it from the command line).

Several processes (NCCL on GPUs, gloo on CPUs; see README, "Distributed training"):

    python run_recbole_mm.py --model=FREEDOM --dataset=baby --nproc=4
    python run_recbole_mm.py --model=FREEDOM --dataset=baby --nproc=4 --world_size=8 \
        --ip=10.0.0.1 --port=29500 --group_offset=4      # second of two machines
    torchrun --nproc_per_node=4 run_recbole_mm.py --model=FREEDOM --dataset=baby
"""
import argparse
import sys


def format_metrics(result):
    return "  ".join(f"{name}: {float(value):.4f}" for name, value in result.items())


def _run(args, config_file_list, run_recbole_mm):
    """One process, ``--nproc`` processes started here, or this rank of a ``torchrun`` launch."""
    from recbole_mm import distributed

    ranks = distributed.torchrun_config()
    if ranks:
        try:
            result = run_recbole_mm(model=args.model, dataset=args.dataset, config_file_list=config_file_list,
                                    config_dict=ranks)
        finally:
            if distributed.dist.is_initialized():
                distributed.dist.destroy_process_group()
        return result if ranks["local_rank"] == 0 else None  # one print per machine, as with --nproc
    if args.nproc > 1 or args.world_size > 0:
        return distributed.run_distributed(model=args.model, dataset=args.dataset, config_file_list=config_file_list,
                                           nproc=args.nproc, world_size=args.world_size, ip=args.ip,
                                           port=args.port, group_offset=args.group_offset)
    return run_recbole_mm(model=args.model, dataset=args.dataset, config_file_list=config_file_list)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="VBPR", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="synthetic", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="config files, separated by spaces")
    # distributed training (recbole_mm.distributed), RecBole's run_recbole.py flags
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (-1: nproc)")
    parser.add_argument("--ip", type=str, default="localhost", help="address of the machine holding rank 0")
    parser.add_argument("--port", type=str, default="5678", help="free port on that machine")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this machine's first process")
    args, _ = parser.parse_known_args(argv)

    import recbole_mm  # noqa: F401  (applies the RecBole compatibility patches)
    from recbole_mm.data import DatasetNotFoundError, FeatureFileError
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.utils import UnknownModelError

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        result = _run(args, config_file_list, run_recbole_mm)
    except (DatasetNotFoundError, FeatureFileError, UnknownModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result is None:  # a torchrun process other than its machine's first: that one prints
        return 0
    print(f"best valid: {format_metrics(result['best_valid_result'])}")
    print(f"test result: {format_metrics(result['test_result'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
