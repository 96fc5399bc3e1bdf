"""Side by side: a reference implementation (enoche/MMRec, or CRIPAC-DIG/MICRO) and ours, same
data folder, same fixed hyper-parameters, run AT THE SAME TIME (two processes, one CPU thread
each), one markdown table.

    python benchmarks/compare_reference.py --reference <MMRec checkout> \\
        --model FREEDOM --data dataset/synthetic --set dropout=0.8 --set reg_weight=0.0001 \\
        --seeds 999 1000 1001 --out results/reference/synthetic.md

``--reference``: an MMRec checkout (the directory holding ``src/``, ``src/`` itself, or the bare
git directory, whose HEAD is exported with ``git archive``), a repository in MMRec's layout
(enoche/LIRDRec: ``--model LIRDRec``), or a MICRO one (``codes/``).
Everything runs in a temporary directory: a copy of their code (to which only a dataset yaml
is added), and the data folder linked file by file, with what one side needs and lacks
(DRAGON's ``user_graph_dict.npy``; with ``--fake-features``, random feature matrices).
Their code never enters this repository.

``--data``: a folder in MMRec's layout, ``<name>.inter`` (userID, itemID, x_label) with
``image_feat.npy`` / ``text_feat.npy``.

Both sides get the same values: ``--set key=value`` (MMRec's key names; :data:`KEY_MAP` renames
the few that differ on our side), and for every other key of MMRec's grid
(``hyper_parameters``) our packaged default, so neither side runs a grid. Ours runs with
``eval_protocol: mmrec``, MMRec's early stopping (patience 20 on valid Recall@20) and MMRec's
metrics (Recall, NDCG, Precision, MAP: the evaluation times compare the same work).

The table: best valid and its test Recall@20 / NDCG@20, epochs to the best valid, mean
seconds per training epoch and per valid evaluation (from each side's per-epoch log lines),
and each process's peak RSS (``ru_maxrss``).

``--max-batches N`` stops every training epoch of both sides after its first N batches (each
side's runner truncates its own train loader; the evaluations stay whole). The seconds per
"epoch" are then those of N batches: for speed and memory on a catalogue where one whole epoch
of the reference takes hours (MENTOR on Sports), never for accuracy.
"""
import argparse
import ast
import datetime
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKSPACE = os.path.dirname(REPO)  # the folder that holds this checkout (and ../shared, ../refvenv)
# a virtual environment beside the checkout with the reference's dependencies (torch, numpy, scipy,
# pandas, pyyaml, torch_geometric, scikit-learn); RECBOLE_MM_REF_PYTHON overrides it
DEFAULT_REF_PYTHON = os.environ.get("RECBOLE_MM_REF_PYTHON", os.path.join(WORKSPACE, "refvenv", "bin", "python"))

# reference code in MMRec's layout that is not MMRec itself, by model (the table's label)
REFERENCE_OWNER = {"LIRDRec": "enoche/LIRDRec", "MENTOR": "Jinfeng-Xu/MENTOR", "COHESION": "Jinfeng-Xu/COHESION"}
# our model name -> the reference's, where they differ
REFERENCE_MODEL = {"SelfCF": "SELFCFED_LGN"}
# MMRec key -> our key, per model, where the names differ.
KEY_MAP = {
    "DRAGON": {"n_layers": "n_ui_layers"},
    "COHESION": {"num_layer": "n_ui_layers"},
    "SLMRec": {"ssl_temp": "ssl_temperature", "ssl_alpha": "ssl_weight"},
    "MENTOR": {"temp": "ssl_temperature"},
}
# models whose MMRec version reads user_graph_dict.npy (built offline there; here by user_graph_dict)
USER_GRAPH_MODELS = ("DRAGON", "DualGNN", "VLIF", "MENTOR", "COHESION")
# models whose reference reads an item-item co-interaction graph file (DA-MRS: the authors'
# build_iib_graph.py --topk=2), here written by item_graph_dict: {model: (file, top k, min count)}
ITEM_GRAPH_MODELS = {"DAMRS": ("item_graph_dict_2.npy", 2, 2)}
# models whose reference hard-codes the feature widths: {model: (image width, text width)}; other
# widths are brought to these by a fixed random projection (see fixed_width_features)
FEATURE_WIDTHS = {"VLIF": (384, 384)}
# MMRec grid keys with no counterpart on our side (passed to MMRec only).
REFERENCE_ONLY = {"SLMRec": {"reg"}, "DRAGON": {"aggr_mode"}, "VLIF": {"aggr_mode", "k", "u_layers"}, "MMGCN": {"aggr_mode", "concat"}, "GRCN": {"aggr_mode"}}
# MMRec's helper package, and its name in the Jinfeng-Xu forks (MENTOR, COHESION)
MMREC_UTILS = ("utils", "utils_package")
METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN_LINE = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s")
EVAL_LINE = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s, valid_score: ([\d.eE+-]+|nan)\]")
MICRO_LINE = re.compile(r"Epoch (\d+) \[([\d.]+)s \+ ([\d.]+)s\]: train==\[[^\]]*\], recall=\[([\d.]+), ([\d.]+)\]"
                        r".*ndcg=\[([\d.]+), ([\d.]+)\]")
MICRO_TRAIN_ONLY = re.compile(r"Epoch (\d+) \[([\d.]+)s\]: train==")


# ----------------------------------------------------------------------------- pure parts
def parse_value(text):
    """``--set`` value: a Python/yaml literal when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(pairs):
    """["k=v", ...] -> {k: value}; a pair without '=' is a ValueError naming it."""
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        result[key.strip()] = parse_value(value.strip())
    return result


def split_configs(model, fixed, grid_keys, our_defaults):
    """The reference's and our config values for one model.

    Args:
        fixed: ``--set`` values, in the reference's key names.
        grid_keys: the reference's ``hyper_parameters`` (besides seed); each gets one value:
            ``fixed`` or else our default for the (renamed) key, when we have one.
        our_defaults: our resolved config (key -> value); may be empty.

    Returns:
        (reference values, our values, keys of the grid left at the reference's first value).
    """
    rename = KEY_MAP.get(model, {})
    ref_only = REFERENCE_ONLY.get(model, set())
    reference, ours, unresolved = {}, {}, []
    for key, value in fixed.items():
        reference[key] = value
        if key not in ref_only:
            ours[rename.get(key, key)] = value
    for key in grid_keys:
        if key in fixed or key == "seed":
            continue
        our_key = rename.get(key, key)
        if key not in ref_only and our_defaults.get(our_key) is not None:
            reference[key] = ours[our_key] = our_defaults[our_key]
        else:
            unresolved.append(key)
    return reference, ours, unresolved


def parse_epoch_log(text):
    """Per-epoch training seconds, evaluation seconds and valid scores from an MMRec- or
    RecBole-style log (``epoch N training [time: Xs, ...`` / ``epoch N evaluating [time: Xs,
    valid_score: V]``; colour codes ignored)."""
    text = ANSI.sub("", text)
    train = [float(t) for _, t in TRAIN_LINE.findall(text)]
    evals = EVAL_LINE.findall(text)
    return {"train_seconds": train, "eval_seconds": [float(t) for _, t, _ in evals],
            "valid_scores": [float(v) for _, _, v in evals]}


def parse_metric_line(line):
    """``recall@20: 0.1234    ndcg@20: 0.0567`` (MMRec's dict2str) -> {name: value}."""
    return {key.lower(): float(value) for key, value in re.findall(r"([\w@]+)\s*:\s*([\d.eE+-]+)", line)}


def parse_mmrec_result(text):
    """MMRec's final 'best valid result: ...' and the 'test result: ...' after it."""
    lines = ANSI.sub("", text).splitlines()
    best = [i for i, line in enumerate(lines) if "best valid result:" in line]
    if not best:
        return None, None
    valid = parse_metric_line(lines[best[-1]].split("best valid result:", 1)[1])
    test = next((parse_metric_line(line.split("test result:", 1)[1]) for line in lines[best[-1] + 1:]
                 if "test result:" in line and line.split("test result:", 1)[1].strip()), None)
    return valid, test


def parse_micro_log(text):
    """MICRO's per-epoch lines: ``Epoch N [train s + eval s]: ..., recall=[r@10, r@20], ...,
    ndcg=[n@10, n@20]`` (its validation), the ``Test_Recall@20`` line after each improvement
    and the final test-result dict (at K = [10, 20]). Returns the epoch-log dict plus best valid / test results."""
    text = ANSI.sub("", text)
    rows = MICRO_LINE.findall(text)
    train = [float(r[1]) for r in rows] + [float(t) for _, t in MICRO_TRAIN_ONLY.findall(text)]
    scores = [float(r[4]) for r in rows]
    log = {"train_seconds": train, "eval_seconds": [float(r[2]) for r in rows], "valid_scores": scores}
    if not rows:
        return log, None, None
    best = int(np.argmax(scores))
    valid = {"recall@20": float(rows[best][4]), "ndcg@20": float(rows[best][6])}
    tests = re.findall(r"Test_Recall@20: ([\d.]+)", text)
    test = {"recall@20": float(tests[-1])} if tests else None
    at_20 = r"array\(\[[^,\]]+,\s*([\d.eE+-]+)\s*\]\)"  # the second of K = [10, 20]
    final = re.findall(rf"'recall': {at_20}, 'ndcg': {at_20}", text)
    if final:  # the run's last line: the whole test result at the best valid epoch
        test = {"recall@20": float(final[-1][0]), "ndcg@20": float(final[-1][1])}
    return log, valid, test


def epochs_to_best(valid_scores):
    """1-based epoch of the first best valid score (a later tie does not count, as in both
    early-stopping rules), or None."""
    return int(np.argmax(valid_scores)) + 1 if valid_scores else None


def summarise(side, log, valid, test, rss_kb, status):
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    scores = {f"{split}_{metric}": (result or {}).get(metric)
              for split, result in (("valid", valid), ("test", test)) for metric in METRICS}
    return {"side": side, "status": status, **scores,
            "epochs_to_best": epochs_to_best(log["valid_scores"]), "epochs_run": len(log["train_seconds"]),
            "train_epoch_s": mean(log["train_seconds"]), "eval_s": mean(log["eval_seconds"]),
            "peak_rss_mb": rss_kb / 1024 if rss_kb else None}


COLUMNS = [("side", "side"), ("valid_recall@20", "valid R@20"), ("valid_ndcg@20", "valid N@20"),
           ("test_recall@20", "test R@20"), ("test_ndcg@20", "test N@20"), ("epochs_to_best", "epochs to best"),
           ("epochs_run", "epochs run"), ("train_epoch_s", "s / train epoch"), ("eval_s", "s / evaluation"),
           ("peak_rss_mb", "peak RSS MB"), ("status", "status")]


def format_cell(key, value):
    if value is None:
        return "-"
    if key.startswith(("valid_", "test_")):
        return f"{value:.4f}"
    if key in ("train_epoch_s", "eval_s"):
        return f"{value:.3f}"
    if key == "peak_rss_mb":
        return f"{value:.0f}"
    if isinstance(value, float):  # epochs averaged over seeds
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows):
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(format_mean_cell(key, row) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def user_graph_dict(users, items, n_users, max_neighbours=200):
    """DualGNN/DRAGON's user-user graph (MMRec's ``user_graph_dict.npy``): for every user, the
    users sharing at least one train item, by decreasing number of shared items (ties by user
    id), at most ``max_neighbours``.

    Args:
        users, items: (E,) train interactions (duplicates count once).
        n_users: users in the dictionary (``0..n_users-1``; those without neighbours get
            ``[[], []]``).

    Returns:
        dict user -> [neighbour ids (list of int), shared-item counts (list of float)].
    """
    n_items = int(items.max()) + 1 if len(items) else 0
    incidence = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    incidence.data[:] = 1.0  # duplicates summed by csr -> binary
    shared = (incidence @ incidence.T).tocoo()
    keep = shared.row != shared.col
    rows, cols, counts = shared.row[keep], shared.col[keep], shared.data[keep]
    order = np.lexsort((cols, -counts, rows))
    rows, cols, counts = rows[order], cols[order], counts[order]
    starts = np.searchsorted(rows, np.arange(n_users))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < max_neighbours
    rows, cols, counts = rows[keep], cols[keep], counts[keep]
    bounds = np.searchsorted(rows, np.arange(n_users + 1))
    counts = counts.astype(float)
    return {user: [cols[bounds[user]:bounds[user + 1]].tolist(), counts[bounds[user]:bounds[user + 1]].tolist()]
            for user in range(n_users)}


def item_graph_dict(users, items, n_items, top_k, min_count):
    """DA-MRS's item-item graph (its ``item_graph_dict_2.npy``): for every item, at most
    ``top_k`` items sharing at least ``min_count`` train users with it, by decreasing count (ties
    by item id): :func:`user_graph_dict` with the roles of users and items swapped."""
    graph = user_graph_dict(items, users, n_items, max_neighbours=top_k)
    return {item: [[j for j, c in zip(*pair) if c >= min_count], [c for c in pair[1] if c >= min_count]]
            for item, pair in graph.items()}


# ----------------------------------------------------------------------------- set-up
def present_files(git_dir, revision=None):
    """The files of ``revision`` whose blobs the (possibly partial) mirror holds: a mirror may
    lack its largest files, and ``git archive`` fails on a missing blob."""
    listing = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", revision or "HEAD"], check=True,
                             capture_output=True, text=True).stdout.splitlines()
    entries = [(line.split("\t", 1)[0].split()[2], line.split("\t", 1)[1]) for line in listing]
    check = subprocess.run(["git", "--git-dir", git_dir, "cat-file", "--batch-check"], input="\n".join(o for o, _ in entries),
                           capture_output=True, text=True).stdout.splitlines()
    return [name for (_, name), answer in zip(entries, check) if not answer.endswith("missing")]


def export_reference(path, workdir, branch=None):
    """Copy the reference code into ``workdir``; returns (kind, root) with kind 'mmrec'
    (root = the copy's ``src/``) or 'micro' (root = the copy's ``codes/``). A bare git
    directory is exported at ``branch`` (default its HEAD)."""
    path = os.path.abspath(path)
    target = os.path.join(workdir, "reference")
    if os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects")):
        archive = subprocess.run(["git", "--git-dir", path, "archive", branch or "HEAD", "--", *present_files(path, branch)],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    elif os.path.isdir(os.path.join(path, "src")) or os.path.isdir(os.path.join(path, "codes")):
        shutil.copytree(path, target, ignore=shutil.ignore_patterns(".git", "data", "log", "saved"))
    elif any(os.path.isfile(os.path.join(path, package, "quick_start.py")) for package in MMREC_UTILS):
        shutil.copytree(path, os.path.join(target, "src"), ignore=shutil.ignore_patterns("log", "saved"))
    else:
        raise ValueError(f"--reference {path}: neither an MMRec checkout (src/), MMRec's src/, "
                         "a MICRO checkout (codes/) nor a bare git directory")
    if any(os.path.isfile(os.path.join(target, "src", package, "quick_start.py")) for package in MMREC_UTILS):
        return "mmrec", os.path.join(target, "src")
    if os.path.isfile(os.path.join(target, "codes", "main.py")):
        return "micro", os.path.join(target, "codes")
    raise ValueError(f"--reference {path}: no src/utils/quick_start.py (MMRec) or codes/main.py (MICRO) in it")


def keep_interacted_items(target, name):
    """Rewrite the linked folder ``target`` to the items of its ``<name>.inter``: the feature
    rows of items without a single interaction are dropped and the item ids renumbered in id
    order (the files are replaced, never written through the links). MMRec's layout makes every
    feature row an item, ranked and put in the item graphs although nobody interacted with it;
    RecBole knows the items of the interaction file only, so on such a folder the two sides rank
    different catalogues. Returns the number of items dropped."""
    inter = os.path.join(target, f"{name}.inter")
    frame = pd.read_csv(inter, sep="\t")
    items = np.unique(frame.itemID.to_numpy())
    features = sorted(entry for entry in os.listdir(target) if entry.endswith(".npy") and "_feat" in entry)
    rows = {entry: np.load(os.path.join(target, entry), mmap_mode="r") for entry in features}
    n_rows = max([matrix.shape[0] for matrix in rows.values()], default=int(items[-1]) + 1)
    for entry, matrix in rows.items():
        if matrix.shape[0] <= items[-1]:
            raise ValueError(f"{entry}: {matrix.shape[0]} rows, but {name}.inter has item id {items[-1]}")
        kept = np.ascontiguousarray(matrix[items])
        os.remove(os.path.join(target, entry))
        np.save(os.path.join(target, entry), kept)
    frame["itemID"] = np.searchsorted(items, frame.itemID.to_numpy())
    os.remove(inter)
    frame.to_csv(inter, sep="\t", index=False)
    return n_rows - len(items)


def link_data(folder, workdir, fake_features, seed, modalities=("image", "text"), interacted_items_only=False):
    """``workdir/data/<name>/`` with every file of ``folder`` linked, but the feature files of the
    modalities not in ``modalities`` (both sides then see a one-modality dataset: MMRec leaves
    ``v_feat`` / ``t_feat`` None for an absent file); with ``interacted_items_only``, rewritten
    to the items with interactions (:func:`keep_interacted_items`). Returns (data root, name,
    train users, train items, n_users)."""
    folder = os.path.abspath(folder.rstrip("/"))
    name = os.path.basename(folder)
    inter = os.path.join(folder, f"{name}.inter")
    if not os.path.isfile(inter):
        raise ValueError(f"--data {folder}: no {name}.inter (MMRec layout: userID, itemID, x_label)")
    target = os.path.join(workdir, "data", name)
    os.makedirs(target)
    left_out = {f"{modality}_feat.npy" for modality in ("image", "text") if modality not in modalities}
    for entry in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, entry)) and entry not in left_out:
            os.symlink(os.path.join(folder, entry), os.path.join(target, entry))
    if interacted_items_only:
        dropped = keep_interacted_items(target, name)
        print(f"--interacted-items-only: {dropped} feature rows without interactions dropped, item ids renumbered")
        inter = os.path.join(target, f"{name}.inter")
    frame = pd.read_csv(inter, sep="\t", usecols=["userID", "itemID", "x_label"])
    n_users, n_items = int(frame.userID.max()) + 1, int(frame.itemID.max()) + 1
    missing = [f"{m}_feat.npy" for m in modalities if not os.path.isfile(os.path.join(target, f"{m}_feat.npy"))]
    if missing and not fake_features:
        raise ValueError(f"--data {folder}: missing {missing} (pass --fake-features to use random ones)")
    rng = np.random.default_rng(seed)
    for file, dim in (("image_feat.npy", 4096), ("text_feat.npy", 384)):
        if file in missing:  # only files of ``modalities``
            np.save(os.path.join(target, file), rng.standard_normal((n_items, dim), dtype=np.float32))
    train = frame[frame.x_label == 0]
    return os.path.join(workdir, "data") + os.sep, name, train.userID.to_numpy(), train.itemID.to_numpy(), n_users


def fixed_width_features(folder, widths, seed):
    """Feature files of the widths a reference hard-codes (VLIF: 384-d MiniLM encodings of the
    VLM descriptions as the visual modality, 384-d text), written into ``folder`` beside the
    originals: a file already that wide is used as it is, another is mapped by a fixed
    Gaussian projection (seeded), the visual one L2-normalised per row as the MiniLM
    encodings are. Returns {"image": file name, "text": file name}, without a modality whose file
    is absent."""
    rng = np.random.default_rng(seed)
    names = {}
    for modality, source, width, normalise in (("image", "image_feat.npy", widths[0], True),
                                               ("text", "text_feat.npy", widths[1], False)):
        if not os.path.isfile(os.path.join(folder, source)):
            continue  # a modality left out by --modalities
        features = np.load(os.path.join(folder, source)).astype(np.float32)
        if features.shape[1] == width:
            names[modality] = source
            continue
        projection = rng.standard_normal((features.shape[1], width)).astype(np.float32) / np.sqrt(features.shape[1])
        mapped = features @ projection
        if normalise:
            mapped /= np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)
        names[modality] = f"{modality}_feat_{width}.npy"
        np.save(os.path.join(folder, names[modality]), mapped)
    return names


def mmrec_grid(src, model):
    """MMRec's grid for ``model``: {key: list of values} over ``hyper_parameters`` (seed aside)."""
    import yaml

    values, keys = {}, []
    for path in (os.path.join(src, "configs", "overall.yaml"), os.path.join(src, "configs", "model", f"{model}.yaml")):
        if os.path.isfile(path):
            with open(path) as handle:
                loaded = yaml.safe_load(handle) or {}
            keys += loaded.get("hyper_parameters") or []
            values.update(loaded)
    return {key: values.get(key) if isinstance(values.get(key), list) else [values.get(key)]
            for key in dict.fromkeys(keys) if key != "seed"}


def write_mmrec_dataset_yaml(src, name, image_file="image_feat.npy", text_file="text_feat.npy"):
    with open(os.path.join(src, "configs", "dataset", f"{name}.yaml"), "w") as handle:
        handle.write("# written by recbole_mm's benchmarks/compare_reference.py\n"
                     "USER_ID_FIELD: userID\nITEM_ID_FIELD: itemID\nTIME_FIELD: timestamp\n"
                     "filter_out_cod_start_users: True\n"
                     f"inter_file_name: '{name}.inter'\n"
                     f"vision_feature_file: '{image_file}'\ntext_feature_file: '{text_file}'\n"
                     "user_graph_dict_file: 'user_graph_dict.npy'\nfield_separator: \"\\t\"\n")


def our_defaults(model, dataset):
    """Our resolved config for ``model`` (empty when the model is not available yet)."""
    sys.path.insert(0, REPO)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line
    try:
        from recbole_mm.config import Config

        config = Config(model, dataset, config_dict={"synthetic_generator": None})
        return dict(config.final_config_dict)
    except Exception:  # noqa: BLE001 - a model another helper has not landed yet
        return {}


def write_micro_data(data_root, name, micro_root, frame_path):
    """MICRO's layout, ``<micro>/data/<name>/5-core/{train,val,test}.json`` (user -> items)
    and the two feature files beside it."""
    frame = pd.read_csv(frame_path, sep="\t", usecols=["userID", "itemID", "x_label"])
    target = os.path.join(os.path.dirname(micro_root), "data", name)
    os.makedirs(os.path.join(target, "5-core"), exist_ok=True)
    for label, file in ((0, "train"), (1, "val"), (2, "test")):
        part = frame[frame.x_label == label]
        grouped = part.groupby("userID").itemID.apply(lambda s: [int(i) for i in s])
        with open(os.path.join(target, "5-core", f"{file}.json"), "w") as handle:
            json.dump({str(int(u)): items for u, items in grouped.items()}, handle)
    for file in ("image_feat.npy", "text_feat.npy"):
        os.symlink(os.path.realpath(os.path.join(data_root, name, file)), os.path.join(target, file))


# ----------------------------------------------------------------------------- running
#: the environment variable through which both runners learn ``--max-batches``
MAX_BATCHES_ENV = "RECBOLE_MM_MAX_BATCHES"


def child_env(max_batches=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    env.pop("PYTHONPATH", None)
    env.pop(MAX_BATCHES_ENV, None)
    if max_batches:
        env[MAX_BATCHES_ENV] = str(max_batches)
    return env


def start(command, cwd, log_path, max_batches=None):
    handle = open(log_path, "w")
    return subprocess.Popen(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                            env=child_env(max_batches)), handle


def wait_all(processes, timeout):
    """Wait for every (name -> (Popen, log handle)); returns name -> (exit code, ru_maxrss KB)."""
    import time

    deadline = time.monotonic() + timeout if timeout else None
    results, pending = {}, dict(processes)
    while pending:
        for name, (proc, handle) in list(pending.items()):
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                handle.close()
                results[name] = (proc.returncode, usage.ru_maxrss)
                del pending[name]
        if deadline and time.monotonic() > deadline:
            for name, (proc, handle) in pending.items():
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                handle.close()
                results[name] = ("timeout", usage.ru_maxrss)
            break
        time.sleep(0.2)
    return results


def reference_command(args, kind, src, data, grid, values, unresolved):
    """The command that runs the reference side, and the config it gets (for the record)."""
    data_root, name, train_users, train_items, n_users = data
    python = args.ref_python or (DEFAULT_REF_PYTHON if os.path.exists(DEFAULT_REF_PYTHON) else sys.executable)
    runner = os.path.join(HERE, "reference_runner.py")
    if kind == "micro":
        write_micro_data(data_root, name, src, os.path.join(data_root, name, f"{name}.inter"))
        argv = ["--dataset", name, "--seed", str(args.seed), "--gpu_id", "0", "--verbose", "1",
                "--early_stopping_patience", "20", "--Ks", "[10, 20]", "--debug"]
        argv += ["--epoch", str(args.epochs)] if args.epochs else []
        for key, value in values.items():
            argv += [f"--{key}", str(value)]
        return [python, runner, "--micro", src, *argv], {"argv": argv}
    # a modality left out keeps its usual file name, absent from the folder: MMRec reads it as None
    write_mmrec_dataset_yaml(src, name, args.feature_files.get("image", "image_feat.npy"),
                             args.feature_files.get("text", "text_feat.npy"))
    graph_file = os.path.join(data_root, name, "user_graph_dict.npy")
    if args.model in USER_GRAPH_MODELS and not os.path.exists(graph_file):
        np.save(graph_file, user_graph_dict(train_users, train_items, n_users), allow_pickle=True)
    if args.model in ITEM_GRAPH_MODELS:
        file_name, top_k, min_count = ITEM_GRAPH_MODELS[args.model]
        n_items = int(max(train_items)) + 1
        np.save(os.path.join(data_root, name, file_name),
                item_graph_dict(train_users, train_items, n_items, top_k, min_count), allow_pickle=True)
    config = {"gpu_id": 0, "use_gpu": False, "data_path": data_root, "seed": [args.seed],
              "save_recommended_topk": False, "stopping_step": args.stopping_step,
              "valid_metric": "Recall@20"}
    # one value per grid key, as one-element lists (MMRec iterates over them): no grid search
    config.update({key: [value] if key in grid else value for key, value in values.items()})
    config.update({key: grid[key][:1] for key in unresolved})
    if args.epochs:
        config["epochs"] = args.epochs
    return [python, runner, src, REFERENCE_MODEL.get(args.model, args.model), name, json.dumps(config)], config


def our_command(args, data, values):
    data_root, name = data[:2]
    workdir = os.path.dirname(data_root.rstrip(os.sep))
    config = {"data_path": data_root, "checkpoint_dir": os.path.join(workdir, "saved"),
              "seed": args.seed, "eval_protocol": "mmrec", "stopping_step": args.stopping_step, "valid_metric": "Recall@20",
              "eval_step": 1, "epochs": args.epochs or 1000, "metrics": ["Recall", "NDCG", "Precision", "MAP"],
              "synthetic_generator": None, "modality_files": dict(args.feature_files),
              "modality_dims": None, "state": "INFO", "show_progress": False, **values}
    return [sys.executable, os.path.join(HERE, "ours_runner.py"), args.model, name, json.dumps(config)], config


def read_side(side, kind, log_path):
    """(epoch log, best valid result, its test result) from one side's output."""
    with open(log_path, errors="replace") as handle:
        text = handle.read()
    if side == "reference" and kind == "micro":
        return (*parse_micro_log(text), text)
    if side == "reference":
        return (parse_epoch_log(text), *parse_mmrec_result(text), text)
    found = re.findall(r"^RESULT (.*)$", text, re.M)
    result = json.loads(found[-1]) if found else {}
    return parse_epoch_log(text), result.get("best_valid_result"), result.get("test_result"), text


def run(args):
    """Run the requested sides at once; returns (table rows, metadata for the record)."""
    fixed = parse_sets(args.set)
    workdir = tempfile.mkdtemp(prefix="compare_reference_")
    sides = ("reference", "ours") if args.only == "both" else (args.only,)
    data = link_data(args.data, workdir, args.fake_features, args.seed, args.modalities, args.interacted_items_only)
    args.feature_files = {modality: f"{modality}_feat.npy" for modality in args.modalities}
    if args.model in FEATURE_WIDTHS:
        args.feature_files = fixed_width_features(os.path.join(data[0], data[1]), FEATURE_WIDTHS[args.model], args.seed)
    kind, src = export_reference(args.reference, workdir, args.ref_branch) if args.reference else (None, None)
    grid = mmrec_grid(src, REFERENCE_MODEL.get(args.model, args.model)) if kind == "mmrec" else {}
    ref_values, our_values, unresolved = split_configs(args.model, fixed, list(grid), our_defaults(args.model, data[1]))
    our_values.update(parse_sets(args.ours_set))
    meta = {"workdir": workdir, "reference_kind": kind, "reference_branch": args.ref_branch,
            "feature_files": args.feature_files, "reference_values": ref_values, "our_values": our_values,
            "grid_left": {key: grid[key][:1] for key in unresolved}}
    processes = {}
    for side in sides:
        if side == "reference":
            command, meta["reference_config"] = reference_command(args, kind, src, data, grid, ref_values, unresolved)
        else:
            command, meta["our_config"] = our_command(args, data, our_values)
        processes[side] = start(command, src if side == "reference" else workdir, os.path.join(workdir, f"{side}.log"),
                                args.max_batches)
    outcome = wait_all(processes, args.timeout)
    rows = []
    for side in sides:
        code, rss = outcome[side]
        log, valid, test, text = read_side(side, kind, os.path.join(workdir, f"{side}.log"))
        if code != 0:
            tail = "\n".join(text.splitlines()[-25:])
            print(f"--- {side} failed ({code}); the end of its log:\n{tail}", file=sys.stderr)
        owner = {"mmrec": REFERENCE_OWNER.get(args.model, "MMRec"), "micro": "MICRO"}.get(kind) \
            if side == "reference" else "recbole_mm"
        if side == "reference" and args.ref_name:
            owner = args.ref_name
        label = f"{owner} {args.model}" + (f" ({args.ref_branch})" if side == "reference" and args.ref_branch else "")
        status = "ok" if code == 0 else f"exit {code}: see {workdir}/{side}.log"
        rows.append(summarise(label, log, valid, test, rss, status))
    return rows, meta


NUMERIC = tuple(key for key, _ in COLUMNS if key not in ("side", "status"))


def mean_over_seeds(per_seed):
    """One row per side from the rows of several seeds (each seed's run = a list of side rows,
    the sides in the same order): each number is the mean over the seeds where it exists, with
    ``<key>_std`` (sample standard deviation) beside it and the seeds' own values under
    ``per_seed``; the status is "ok" only when every seed's is."""
    merged = []
    for side_rows in zip(*per_seed):
        row = {"side": side_rows[0]["side"], "seeds": len(side_rows), "per_seed": list(side_rows)}
        failed = [r["status"] for r in side_rows if r["status"] != "ok"]
        row["status"] = "ok" if not failed else failed[0]
        numbers = {k for r in side_rows for k, v in r.items() if isinstance(v, (int, float)) and k != "seeds"}
        for key in sorted(numbers | {k for k in NUMERIC if k in side_rows[0]}):
            values = [r[key] for r in side_rows if r.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
            row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        merged.append(row)
    return merged


def format_mean_cell(key, row):
    """``0.3521 ± 0.0040`` for a row averaged over seeds; the plain cell otherwise."""
    cell = format_cell(key, row.get(key))
    std = row.get(f"{key}_std")
    if std is None or cell == "-":
        return cell
    return f"{cell} ± {format_cell(key, std)}"


def portable(text):
    """``text`` with this machine's paths made portable: a fetched mirror ``.../<owner>+<name>/repo``
    becomes ``<owner/name checkout>``, the checkout ``.`` and the folder around it ``..``, so the
    results files name no path of the machine they were measured on."""
    text = re.sub(r"[^\s\"']*/([\w.-]+)\+([\w.-]+)/repo", r"<\1/\2 checkout>", text)
    return text.replace(REPO, ".").replace(WORKSPACE + os.sep, "../")


def portable_arguments(argv):
    """The command's arguments without the paths of this machine that :func:`portable` cannot
    place: ``--ref-python``'s interpreter, and a ``--data`` folder outside the workspace, become
    placeholders."""
    out = []
    for index, value in enumerate(argv):
        flag = argv[index - 1] if index else ""
        if flag == "--ref-python":
            value = "<a python with the reference's packages>"
        elif flag == "--data" and not os.path.abspath(value).startswith(WORKSPACE + os.sep):
            value = f"<{os.path.basename(value.rstrip('/'))} folder>"
        out.append(value)
    return out


def report(args, rows, meta, argv):
    argv = portable_arguments(argv)
    table = markdown_table(rows)
    print(table)
    if not args.out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"Python {platform.python_version()}")
    notes = [f"- hyper-parameters, MMRec's names: `{json.dumps(meta['reference_values'])}`; "
             f"ours: `{json.dumps(meta['our_values'])}`"]
    if meta.get("grid_left"):
        notes.append(f"- MMRec grid keys at MMRec's first value (no counterpart of ours): "
                     f"`{json.dumps(meta['grid_left'])}`")
    with open(args.out, "a") as handle:
        command = portable("python benchmarks/compare_reference.py " + " ".join(argv))
        handle.write(f"\n## {args.model} ({stamp})\n\n```\n{command}\n```\n\n"
                     f"Machine: {machine}; one thread per side, both sides at once.\n\n")
        handle.write("\n".join(notes) + "\n\n" + table + "\n")
    with open(os.path.splitext(args.out)[0] + ".jsonl", "a") as handle:
        handle.write(portable(json.dumps({"time": stamp, "command": argv, "machine": machine, "rows": rows,
                                          **{k: v for k, v in meta.items() if k != "workdir"}}, default=str)) + "\n")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="MMRec or MICRO checkout, its src/ or codes/, or a bare git dir")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="folder in MMRec layout: <name>.inter + image/text_feat.npy")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed value, both sides")
    parser.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a value for our side only (a switch the reference has no key for, e.g. train_sampling=user)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap, both sides")
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="several seeds, one after another (both sides at once per seed); the table gives "
                             "each side's mean ± std over them")
    parser.add_argument("--ref-branch", default=None, help="branch (or commit) of a bare git --reference (default HEAD)")
    parser.add_argument("--ref-name", default=None, help="the reference's name in the table (default MMRec / MICRO)")
    parser.add_argument("--stopping-step", type=int, default=20, help="early-stopping patience, both sides")
    parser.add_argument("--only", choices=("reference", "ours", "both"), default="both")
    parser.add_argument("--ref-python", default=None,
                        help="interpreter for the reference (default: $RECBOLE_MM_REF_PYTHON, else ../refvenv/bin/python "
                             "beside this checkout if present, else this interpreter)")
    parser.add_argument("--fake-features", action="store_true",
                        help="random 4096/384-d features where the folder has none")
    parser.add_argument("--modalities", nargs="+", choices=("image", "text"), default=["image", "text"],
                        help="feature files both sides get (default both): 'text' alone runs a text-only dataset, "
                             "the image file left out (MMRec's v_feat None; ours with modality_files {text: ...})")
    parser.add_argument("--interacted-items-only", action="store_true",
                        help="drop the feature rows of items nobody interacted with (both sides then rank "
                             "the same catalogue: RecBole, hence ours, never sees those items)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before both runs are killed")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="train only the first N batches of every epoch, both sides (speed and memory only)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out", default=None, help="append a section to this markdown file (and a .jsonl beside it)")
    args = parser.parse_args(argv)
    if args.only != "ours" and not args.reference:
        parser.error("--reference is needed unless --only ours")
    per_seed = []
    for seed in args.seeds or [args.seed]:
        args.seed = seed
        rows, meta = run(args)
        per_seed.append(rows)
        if args.keep or any(row["status"] != "ok" for row in rows):
            print(f"(seed {seed}: files kept in {meta['workdir']})", file=sys.stderr)
        else:
            shutil.rmtree(meta["workdir"], ignore_errors=True)
        if len(per_seed) > 1 or args.seeds:
            print(f"seed {seed}:\n{markdown_table(rows)}", file=sys.stderr)
    meta["seeds"] = args.seeds or [args.seed]
    report(args, mean_over_seeds(per_seed) if args.seeds else per_seed[0], meta, argv)


if __name__ == "__main__":
    main()
