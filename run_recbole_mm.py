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
"""
import argparse
import sys


def format_metrics(result):
    if result is None:  # no validation (empty valid split, eval_step: 0) or an empty test split
        return "none (no data to evaluate)"
    return "  ".join(f"{name}: {float(value):.4f}" for name, value in result.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default="VBPR", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="synthetic", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="config files, separated by spaces")
    parser.add_argument("--hyper", action="store_true", help="hyper-parameter search (see --hyper --help)")
    if "--hyper" in (sys.argv[1:] if argv is None else argv):  # its own flags, its own --help
        from recbole_mm.hyper import main as hyper_main

        return hyper_main(argv)
    args, _ = parser.parse_known_args(argv)

    import recbole_mm  # noqa: F401  (applies the RecBole compatibility patches)
    from recbole_mm.data import DatasetNotFoundError, FeatureFileError
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.utils import UnknownModelError

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        result = run_recbole_mm(model=args.model, dataset=args.dataset, config_file_list=config_file_list)
    except (DatasetNotFoundError, FeatureFileError, UnknownModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"best valid: {format_metrics(result['best_valid_result'])}")
    print(f"test result: {format_metrics(result['test_result'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
