"""One summary table per dataset from the runs ``compare_reference.py`` appended to
``results/reference/<dataset>.jsonl``: for each model (and each set of ``--set`` switches), the
latest run, ours against the reference, as ratios, with the issue's targets marked.

    python benchmarks/reference_summary.py results/reference/synthetic.jsonl results/reference/sports.jsonl

A run over several seeds (``--seeds``) is judged on each side's mean over them.

Targets: Recall@20 within ±3% (relative) of the reference's; seconds per training epoch
≤ 0.7× the reference's, per full evaluation ≤ 1.0×, peak RSS ≤ 1.0×. A run capped at a few
epochs (``epochs run`` < 20) compares speed and memory only: its Recall@20 is shown but not
judged.
"""
import argparse
import json

FIDELITY = 0.03
TARGETS = {"train_epoch_s": 0.7, "eval_s": 1.0, "peak_rss_mb": 1.0}
MIN_EPOCHS_FOR_FIDELITY = 20


def switches(record):
    """The ``--set`` and ``--ours-set`` pairs of a run (and its ``--ref-branch``), as one string
    (empty when none)."""
    command = record["command"]
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    pairs += [f"ours: {command[i + 1]}" for i, word in enumerate(command) if word == "--ours-set"]
    pairs += [f"stopping-step={command[i + 1]}" for i, word in enumerate(command) if word == "--stopping-step"]
    pairs += [f"max-batches={command[i + 1]}" for i, word in enumerate(command) if word == "--max-batches"]
    return " ".join(pairs + [f"ref-branch={command[i + 1]}" for i, word in enumerate(command) if word == "--ref-branch"])


def latest_runs(records):
    """The last record of each (model, switches, sides run), in first-seen order."""
    latest = {}
    for record in records:
        sides = tuple(row["side"].split()[0] for row in record["rows"])
        model = record["rows"][0]["side"].split()[1]  # "<owner> <model>[ (<branch>)]"
        latest[(model, switches(record), sides)] = record
    return latest


def ratio(ours, reference):
    if ours is None or reference in (None, 0):
        return None
    return ours / reference


def mark(value, limit, relative=False):
    """``0.93`` / ``+2.1%``, with ``✗`` when outside the target."""
    if value is None:
        return "-"
    if relative:
        change = value - 1.0
        return f"{change:+.1%}" + ("" if abs(change) <= limit else " ✗")
    return f"{value:.2f}×" + ("" if value <= limit else " ✗")


def summary_rows(latest):
    rows = []
    for (model, sets, sides), record in latest.items():
        by_side = {row["side"].split()[0]: row for row in record["rows"]}
        ours = by_side.get("recbole_mm")
        reference = next((row for side, row in by_side.items() if side != "recbole_mm"), None)
        if ours is None or ours["status"] != "ok":
            continue
        failed = reference is not None and reference["status"] != "ok"
        if failed:  # e.g. the reference timed out: ours alone, with the reference's peak RSS
            reference = {**reference, **{key: None for key in reference if key.endswith("@20")},
                         "train_epoch_s": None, "eval_s": None}
        epochs = ours["epochs_run"] if failed else min(row["epochs_run"] or 0 for row in by_side.values())
        judged = epochs >= MIN_EPOCHS_FOR_FIDELITY
        seeds = ours.get("seeds")
        cells = [model + (f" (reference: {record['rows'][0]['status'].split(':')[0]})" if failed else "")
                 + (f", {seeds} seeds" if seeds else ""), sets or "-", f"{epochs:.0f}"]
        for metric in ("valid_recall@20", "test_recall@20"):
            ref_value = reference[metric] if reference else None
            cells.append(f"{ref_value:.4f}" if ref_value is not None else "-")
            cells.append(f"{ours[metric]:.4f}")
            change = ratio(ours[metric], ref_value)
            cells.append(mark(change, FIDELITY, relative=True) if judged else
                         (f"({change - 1.0:+.1%})" if change else "-"))
        for key, limit in TARGETS.items():
            cells.append(mark(ratio(ours[key], reference[key] if reference else None), limit))
        rows.append(cells)
    return rows


def table(rows):
    header = ["model", "switches", "epochs", "ref valid R@20", "ours valid R@20", "Δ valid",
              "ref test R@20", "ours test R@20", "Δ test", "s/epoch ours/ref", "s/eval ours/ref",
              "peak RSS ours/ref"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", nargs="+")
    args = parser.parse_args()
    for path in args.jsonl:
        with open(path, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        print(f"### {path}\n")
        print(table(summary_rows(latest_runs(records))))
        print()


if __name__ == "__main__":
    main()
