"""Quick startup (LIRDRec paper, Fig. 3): valid Recall@20 after each of the first N epochs.

    python benchmarks/quick_startup.py --dataset synthetic --epochs 10

Trains LIRDRec, FREEDOM, VBPR and LightGCN with their packaged defaults on the same split and
writes results/quick_startup_<dataset>.png and .md.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def curves(dataset_name, models, epochs, data_path):
    from recbole.utils import init_seed

    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset, data_preparation
    from recbole_mm.trainer import get_trainer
    from recbole_mm.utils import get_model

    results = {}
    for model_name in models:
        config = Config(model_name, dataset_name, config_dict={"state": "WARNING", "data_path": data_path})
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train, valid, _ = data_preparation(config, dataset)
        init_seed(config["seed"], config["reproducibility"])
        model = get_model(model_name)(config, train._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
        recall, start = [], time.perf_counter()
        for epoch in range(epochs):
            model.train()
            trainer._train_epoch(train, epoch)
            recall.append(float(trainer.evaluate(valid, load_best_model=False)["recall@20"]))
        results[model_name] = (recall, time.perf_counter() - start)
        print(model_name, [round(r, 4) for r in recall], flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=["LIRDRec", "FREEDOM", "VBPR", "LightGCN"])
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    results = curves(args.dataset, args.models, args.epochs, args.data_path)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    epochs = list(range(1, args.epochs + 1))
    for name, (recall, _) in results.items():
        axis.plot(epochs, recall, marker="o", label=name)
    axis.set(xlabel="epoch", ylabel="valid Recall@20", title=f"Quick startup on {args.dataset}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(args.out, f"quick_startup_{args.dataset}.png"), dpi=150)
    with open(os.path.join(args.out, f"quick_startup_{args.dataset}.md"), "w") as handle:
        handle.write(f"# Quick startup on {args.dataset}: valid Recall@20 after each epoch\n\n")
        handle.write("| model | " + " | ".join(str(e) for e in epochs) + " | seconds |\n")
        handle.write("|---|" + "---|" * (len(epochs) + 1) + "\n")
        for name, (recall, seconds) in results.items():
            handle.write(f"| {name} | " + " | ".join(f"{r:.4f}" for r in recall) + f" | {seconds:.0f} |\n")
        handle.write(f"\nCommand: `python benchmarks/quick_startup.py --dataset {args.dataset} --epochs {args.epochs}`\n")


if __name__ == "__main__":
    main()
