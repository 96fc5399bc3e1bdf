#!/usr/bin/env python
"""Train and evaluate a model with recbole_mm, with RecBole's command-line flags.

    python run_recbole_mm.py --model=VBPR --dataset=synthetic
    python run_recbole_mm.py --model=LightGCN --dataset=baby --config_files=properties/mmrec_baby.yaml
    python run_recbole_mm.py --model=VBPR --dataset=synthetic --learning_rate=0.01 --epochs=20
    python run_recbole_mm.py --hyper --model=VBPR --dataset=synthetic --epochs=20   # the yaml's grid
    python run_recbole_mm.py --hyper --params_file=hyper.test --backend=ray --ray_address=auto

``--hyper`` runs a hyper-parameter search, each trial in its own process, selected on valid:
``python run_recbole_mm.py --hyper --help`` lists its flags.

Any other ``--key=value`` overrides that config key (RecBole reads it from the command line).

Several processes (NCCL on GPUs, gloo on CPUs; see docs/scale.md):

    python run_recbole_mm.py --model=FREEDOM --dataset=baby --nproc=4
    python run_recbole_mm.py --model=FREEDOM --dataset=baby --nproc=4 --world_size=8 \
        --ip=10.0.0.1 --port=29500 --group_offset=4      # second of two machines
    torchrun --nproc_per_node=4 run_recbole_mm.py --model=FREEDOM --dataset=baby

The console shows a summary, each epoch and the results; the full log (config, dataset and
model included) goes to the log file whose path is printed at the end (``--verbose`` prints
it all on the console too). A mistake in the config or the data ends in one line,
``error: <message>``, and exit status 2; ``--debug`` (or ``RECBOLE_MM_DEBUG=1``) shows the
traceback instead. Ctrl-C ends the run with exit status 130.
"""
import argparse
import os
import sys

EXIT_USAGE = 2  # a config or data error: fix the input and run again
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def format_metrics(result):
    if result is None:  # no validation (empty valid split, eval_step: 0) or an empty test split
        return "none (no data to evaluate)"
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
    return run_recbole_mm(model=args.model, dataset=args.dataset, config_file_list=config_file_list,
                          verbose=args.verbose)


def parse_args(argv):
    # no abbreviations: --mode=global (a config key) must not be read as --model
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--model", "-m", type=str, default="VBPR", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="synthetic", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="config files, separated by spaces")
    parser.add_argument("--hyper", action="store_true", help="hyper-parameter search (see --hyper --help)")
    parser.add_argument("--verbose", action="store_true",
                        help="print RecBole's full log (config, dataset, model) on the console too")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of config and data errors (also RECBOLE_MM_DEBUG=1)")
    # distributed training (recbole_mm.distributed), RecBole's run_recbole.py flags
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (-1: nproc)")
    parser.add_argument("--ip", type=str, default="localhost", help="address of the machine holding rank 0")
    parser.add_argument("--port", type=str, default="5678", help="free port on that machine")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this machine's first process")
    return parser.parse_known_args(argv)


def debug_requested(args):
    return args.debug or os.environ.get("RECBOLE_MM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def config_overrides(extra):
    """The ``--key=value`` arguments RecBole reads; anything else is a ConfigError naming it."""
    from recbole_mm.errors import ConfigError

    loose = [arg for arg in extra if not (arg.startswith("--") and arg.count("=") == 1 and len(arg) > 3)]
    if loose:
        raise ConfigError(f"unrecognised argument(s) {' '.join(loose)}: write config keys as --key=value "
                          "(e.g. --epochs=20)")
    return list(extra)


def check_launch_flags(args):
    """``--nproc`` >= 1, ``--world_size`` -1 (= nproc) or >= nproc, ``--group_offset`` >= 0."""
    from recbole_mm.errors import ConfigError

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be an integer >= 1 (processes on this machine), got {args.nproc}")
    if args.world_size != -1 and args.world_size < args.nproc:
        raise ConfigError(f"--world_size must be -1 (= --nproc) or >= --nproc ({args.nproc}), got {args.world_size}")
    if args.group_offset < 0:
        raise ConfigError(f"--group_offset must be an integer >= 0, got {args.group_offset}")


def run(args, extra):
    check_launch_flags(args)
    import recbole_mm  # noqa: F401  (applies the RecBole compatibility patches)
    from recbole_mm.quick_start import run_recbole_mm

    # RecBole reads --key=value from sys.argv: hand it the config keys only, not our own flags
    sys.argv = sys.argv[:1] + config_overrides(extra)
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    result = _run(args, config_file_list, run_recbole_mm)
    if result is None:  # a torchrun process other than its machine's first: that one prints
        return
    print(f"best valid: {format_metrics(result['best_valid_result'])}")
    print(f"test result: {format_metrics(result['test_result'])}")
    if result.get("log_file"):
        print(f"log (config, every epoch, results): {result['log_file']}")
    if result.get("saved_model_file"):
        print(f"checkpoint: {result['saved_model_file']}")


def log_file_so_far():
    quick_start = sys.modules.get("recbole_mm.quick_start")
    return quick_start.log_file_path() if quick_start else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--hyper" in argv:  # its own flags, its own --help
        from recbole_mm.hyper import main as hyper_main

        return hyper_main(argv)
    args, extra = parse_args(argv)
    debug = debug_requested(args)
    try:
        run(args, extra)
    except KeyboardInterrupt:
        if debug:
            raise
        log_file = log_file_so_far()
        print("interrupted" + (f"; the log so far: {log_file}" if log_file else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        errors = sys.modules.get("recbole_mm.errors")  # loaded whenever one of its errors was raised
        if debug or errors is None or not isinstance(error, errors.RecboleMMError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
