"""VLIF against its public code (dangkh/VIRAL), tensor by tensor, on one batch with both
sides' weights set equal; then one optimiser step, and what is not a tensor (initialisation,
optimiser, scheduler, negative sampling, graphs, evaluation, loader order).

    python benchmarks/vlif_bisect.py --reference <dangkh/VIRAL checkout> --ref-branch master \\
        --data dataset/synthetic [--config-file properties/vlif_master.yaml] [--set key=value] [--seed 999]

Both models live in this one process (the system python; ``torch_geometric``, which their
code imports, is taken from the reference venv's site-packages when it is not installed
here). Their code is exported from the mirror into a temporary directory and imported from
there at run time (with ``reference_runner.install_shims``); it never enters this
repository. The data folder is prepared as ``compare_reference.py`` prepares it: its files
linked, 384-d copies of the features (their code hard-codes 384) and
``user_graph_dict.npy``; both sides read the same files.

Order of the report:

1. the mapping of their ``state_dict`` onto ours (shapes; a mismatch is a structural
   divergence and is reported first), with the initial distributions of both sides;
2. the graphs (user–item adjacency by a random probe, the kNN item graph, the user–user
   graph) and the features;
3. every intermediate tensor of one training batch (their first batch of epoch 0), the loss
   and its parts, and every gradient;
4. one optimiser step of each side's own trainer (Adam's arguments, the scheduler), the
   parameters after it and the loss at them;
5. evaluation (their stale ``result_embed`` against our recomputed representations) and one
   epoch of each side's training loader (rows, batches, negatives).

Each compared tensor prints its max abs difference; the first one above ``--tol`` (relative
to the tensor's scale) is named at the end as the first divergence. ``--set`` changes our
side only (e.g. ``--set "linear_branches=['text','synergy','image']"``, the master profile
before issue 20, whose first divergence is the branch MLPs' structure); ``--double`` runs the
comparison in float64, where what float32 rounding hides (ReLU inputs at ±4e-7 on opposite
sides of the kink, Adam's ±lr first step on gradients at rounding level) disappears.
Findings: ``results/reference/vlif.md`` (issue 20).
"""
import argparse
import glob
import math
import os
import sys
import tempfile
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import compare_reference as cr  # noqa: E402
import reference_runner  # noqa: E402

BRANCHES = {"image": "v_gcn", "synergy": "s_gcn", "text": "t_gcn"}  # ours -> theirs
THEIR_ORDER = ("image", "synergy", "text")  # their concatenation order [V, S, T]; ours is [T, S, V]
# their CrossmodalNet is called as cms([t, v]): vt_* take the text as query, tv_* the visual one;
# ours names a direction by query_context: "t_v" has the text as query
DIRECTIONS = {"vt": "t_v", "tv": "v_t"}


# ----------------------------------------------------------------------------- report
class Report:
    """Collects comparisons; the first whose difference exceeds tol (relative to the scale of
    the reference tensor) is the first divergence."""

    def __init__(self, tol):
        self.tol = tol
        self.first = None
        self.rows = []
        self.flagged = []

    def section(self, title):
        print(f"\n== {title}")
        self.current = title.split(" ")[0]

    def note(self, text):
        print(f"   {text}")

    def tensor(self, name, theirs, ours, tol=None):
        import torch

        theirs, ours = torch.as_tensor(theirs).detach().double(), torch.as_tensor(ours).detach().double()
        if theirs.shape != ours.shape:
            self.diverged(name, f"shape {tuple(theirs.shape)} (theirs) vs {tuple(ours.shape)} (ours)")
            print(f"   {name:<58} SHAPE {tuple(theirs.shape)} vs {tuple(ours.shape)}")
            return float("inf")
        diff = (theirs - ours).abs().max().item() if theirs.numel() else 0.0
        scale = max(theirs.abs().max().item() if theirs.numel() else 0.0, 1e-12)
        relative = diff / scale
        flag = "" if relative <= (tol or self.tol) else "  <-- DIFFERS"
        print(f"   {name:<58} max|Δ| {diff:.3e}  (scale {scale:.3e}, rel {relative:.1e}){flag}")
        self.rows.append((name, diff, relative))
        if flag:
            self.diverged(name, f"max|Δ| {diff:.3e}, relative {relative:.1e}")
        return diff

    def value(self, name, theirs, ours, same=None):
        same = (theirs == ours) if same is None else same
        print(f"   {name:<58} theirs {theirs!r:<28} ours {ours!r}{'' if same else '  <-- DIFFERS'}")
        if not same:
            self.diverged(name, f"{theirs!r} vs {ours!r}")

    def diverged(self, name, detail):
        self.flagged.append((getattr(self, "current", "1."), name))
        if self.first is None:
            self.first = (name, detail)

    def summary(self):
        counts = Counter(section for section, _ in self.flagged)
        return ", ".join(f"section {section} {count}" for section, count in counts.items()) or "nothing"


# ----------------------------------------------------------------------------- set-up
def prepare(args):
    """Workdir with the exported reference and the data folder (as compare_reference.py)."""
    workdir = tempfile.mkdtemp(prefix="vlif_bisect_")
    data = cr.link_data(args.data, workdir, False, args.seed)
    data_root, name, train_users, train_items, n_users = data
    if not args.keep_catalogue:
        train_users, train_items, n_users = dense_catalogue(os.path.join(data_root, name), name)
    files = cr.fixed_width_features(os.path.join(data_root, name), cr.FEATURE_WIDTHS["VLIF"], args.seed)
    kind, src = cr.export_reference(args.reference, workdir, args.ref_branch)
    if kind != "mmrec":
        raise SystemExit(f"--reference {args.reference}: not in MMRec's layout")
    cr.write_mmrec_dataset_yaml(src, name, files["image"], files["text"])
    graph_file = os.path.join(data_root, name, "user_graph_dict.npy")
    if not os.path.exists(graph_file):
        np.save(graph_file, cr.user_graph_dict(train_users, train_items, n_users), allow_pickle=True)
    return workdir, data_root, name, files, src


def dense_catalogue(folder, name):
    """Rewrite the linked data folder so that both sides have the same catalogue: their code
    takes max(id) + 1 users / items (every feature row is an item, interactions or not),
    RecBole only the ids that occur in the .inter file. Items (and users) without an
    interaction are dropped, the others renumbered densely in id order, and the feature files
    cut to those rows. Returns (train users, train items, n_users) in the new ids."""
    import pandas as pd

    inter = os.path.join(folder, f"{name}.inter")
    frame = pd.read_csv(inter, sep="\t")
    items = np.sort(frame.itemID.unique())
    users = np.sort(frame.userID.unique())
    n_features = np.load(os.path.join(folder, "image_feat.npy"), mmap_mode="r").shape[0]
    print(f"catalogue: {len(users)} users (max id {users.max()}), {len(items)} items with an interaction of "
          f"{n_features} feature rows; {int(frame[frame.x_label == 0].itemID.nunique())} items in train "
          "(their code would rank, sample and build the kNN graph over every feature row: dropped here)")
    frame["itemID"] = np.searchsorted(items, frame.itemID.to_numpy())
    frame["userID"] = np.searchsorted(users, frame.userID.to_numpy())
    os.remove(inter)
    frame.to_csv(inter, sep="\t", index=False)
    for file in ("image_feat.npy", "text_feat.npy"):
        path = os.path.join(folder, file)
        features = np.load(path)[items]
        os.remove(path)
        np.save(path, features)
    train = frame[frame.x_label == 0]
    return train.userID.to_numpy(), train.itemID.to_numpy(), len(users)


def values(args):
    """Hyper-parameters for both sides (MMRec's names; ours from the config file + --set)."""
    import yaml

    ours = {}
    if args.config_file:
        with open(args.config_file) as handle:
            ours.update(yaml.safe_load(handle) or {})
    ours.update(cr.parse_sets(args.set))
    shared = {"mm_image_weight": 0.5, "n_mm_layers": 1, "knn_k": 10, "reg_weight": 0.001, "learning_rate": 0.0001}
    return shared, ours


def build_reference(src, data_root, name, seed, shared):
    """Their model, trainer and train loader, built as their quick_start builds them."""
    reference_runner.install_shims()
    with open(os.path.join(src, "utils", "configurator.py")) as handle:
        from_parent = "'src/configs'" in handle.read()
    os.chdir(os.path.dirname(src) if from_parent else src)
    sys.path.insert(0, src)
    from utils.configurator import Config
    from utils.dataloader import TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, get_trainer, init_seed

    grid = cr.mmrec_grid(src, "VLIF")
    config_dict = {"gpu_id": 0, "use_gpu": False, "data_path": data_root, "seed": [seed],
                   "save_recommended_topk": False, "valid_metric": "Recall@20"}
    config_dict.update({key: [value] if key in grid else value for key, value in shared.items()})
    config_dict.update({key: grid[key][:1] for key in grid if key not in shared})
    config = Config("VLIF", name, config_dict)
    dataset = RecDataset(config)
    train, valid, test = dataset.split()
    for part in (dataset, train, valid, test):  # quick_start logs them; __str__ sets inter_num, read below
        str(part)
    train_data = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
    keys = config["hyper_parameters"]
    if "seed" not in keys:
        keys = ["seed"] + list(keys)
    for key in keys:  # quick_start: the first (only) combination of the grid
        if isinstance(config[key], list):
            config[key] = config[key][0]
    init_seed(config["seed"])
    train_data.pretrain_setup()
    model = reference_runner.cuda_parity(get_model)("VLIF")(config, train_data)
    trainer = get_trainer()(config, model)
    return config, train_data, model, trainer


def build_ours(data_root, name, files, seed, ours_values, config_file):
    import recbole_mm  # noqa: F401
    from recbole.utils import init_seed

    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset, data_preparation
    from recbole_mm.trainer import get_trainer
    from recbole_mm.utils import get_model

    sys.argv = sys.argv[:1]
    workdir = os.path.dirname(data_root.rstrip(os.sep))
    config_dict = {"data_path": data_root, "checkpoint_dir": os.path.join(workdir, "saved"), "seed": seed,
                   "eval_protocol": "mmrec", "valid_metric": "Recall@20", "synthetic_generator": None,
                   "modality_files": dict(files), "modality_dims": None, "state": "WARNING", "show_progress": False,
                   "mm_image_weight": 0.5, "n_mm_layers": 1, "knn_k": 10, "reg_weight": 0.001,
                   "learning_rate": 0.0001, **ours_values}
    config = Config("VLIF", name, None, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return config, dataset, train_data, model, trainer


# ----------------------------------------------------------------------------- mapping
class IdMap:
    """Their raw ids (0-based, dense) -> our internal ids (RecBole's remap, 0 = padding)."""

    def __init__(self, dataset, n_users, n_items):
        import torch

        uid, iid = dataset.uid_field, dataset.iid_field
        self.user = torch.tensor([dataset.field2token_id[uid][str(u)] for u in range(n_users)])
        self.item = torch.tensor([dataset.field2token_id[iid][str(i)] for i in range(n_items)])
        self.n_users_ours = dataset.user_num
        self.nodes = torch.cat([self.user, self.n_users_ours + self.item])

    def users(self, ours):  # our U' rows in their user order
        return ours[self.user]

    def items(self, ours):
        return ours[self.item]


def columns_in_their_order(ours, width):
    """Our [T | S | V] blocks of ``width`` columns as their [V | S | T]."""
    import torch

    block = {"text": 0, "synergy": 1, "image": 2}
    return torch.cat([ours[..., block[name] * width:(block[name] + 1) * width] for name in THEIR_ORDER], dim=-1)


def parameter_map(theirs, ours, ids):
    """[(their name, our name, to_ours(their tensor) -> tensor in our layout, from_ours)];
    parameters of ours that have no counterpart of theirs are reported by the caller."""
    import torch

    rows = []

    def users_to_ours(table, our_table):
        out = our_table.detach().clone()
        out[ids.user] = table
        return out

    for ours_name, their_gcn in BRANCHES.items():
        rows.append((f"{their_gcn}.preference", f"branches.{ours_name}.preference",
                     lambda t, o: users_to_ours(t, o), lambda o: ids.users(o)))
        # their GCN.MLP (-> MLP_1), our ModalityGCN.mlp.0 (-> mlp.2); a layer one side lacks has no counterpart
        their_second = f"{their_gcn}.MLP_1" if f"{their_gcn}.MLP_1.weight" in theirs else None
        our_second = f"branches.{ours_name}.mlp.2" if f"branches.{ours_name}.mlp.2.weight" in ours else None
        for their_layer, our_layer in ((f"{their_gcn}.MLP", f"branches.{ours_name}.mlp.0"), (their_second, our_second)):
            if their_layer is None and our_layer is None:
                continue
            for kind in ("weight", "bias"):
                rows.append((their_layer and f"{their_layer}.{kind}", our_layer and f"{our_layer}.{kind}", None, None))
    order = [{"image": 2, "synergy": 1, "text": 0}[name] for name in THEIR_ORDER]  # their column k -> our column

    def weights_to_ours(table, our_table):
        out = our_table.detach().clone()
        out[ids.user[:, None], torch.tensor(order)[None, :]] = table[:, :, 0]
        return out

    rows.append(("weight_u", "user_modality_weight", weights_to_ours,
                 lambda o: ids.users(o)[:, order].unsqueeze(2)))
    for their_dir, our_dir in DIRECTIONS.items():
        for stage, our_stage in (("trans", "cross"), ("self", "self_attention")):
            theirs_prefix = f"cms.{their_dir}_{stage}"
            ours_prefix = f"synergy_encoder.{our_stage}.{our_dir}"
            pairs = [("layers.0.self_attn.in_proj_weight", "block.attention.in_proj_weight"),
                     ("layers.0.self_attn.in_proj_bias", "block.attention.in_proj_bias"),
                     ("layers.0.self_attn.out_proj.weight", "block.attention.out_proj.weight"),
                     ("layers.0.self_attn.out_proj.bias", "block.attention.out_proj.bias"),
                     ("layers.0.fc1.weight", "block.ffn.0.weight"), ("layers.0.fc1.bias", "block.ffn.0.bias"),
                     ("layers.0.fc2.weight", "block.ffn.2.weight"), ("layers.0.fc2.bias", "block.ffn.2.bias"),
                     ("layers.0.layer_norms.0.weight", "block.norm_attention.weight"),
                     ("layers.0.layer_norms.0.bias", "block.norm_attention.bias"),
                     ("layers.0.layer_norms.1.weight", "block.norm_ffn.weight"),
                     ("layers.0.layer_norms.1.bias", "block.norm_ffn.bias"),
                     ("layer_norm.weight", "norm.weight"), ("layer_norm.bias", "norm.bias")]
            rows += [(f"{theirs_prefix}.{a}", f"{ours_prefix}.{b}", None, None) for a, b in pairs]
    return rows


def map_weights(report, their_model, our_model, ids):
    """Copy their parameters into ours; print the mapping and both sides' initial statistics."""
    import torch

    theirs = dict(their_model.named_parameters(remove_duplicate=False))
    ours = dict(our_model.named_parameters())
    mapping = parameter_map(theirs, ours, ids)
    report.section("1. their state_dict -> ours (shape theirs -> ours; initial mean / std theirs | ours)")
    used_theirs, used_ours = set(), set()
    for their_name, our_name, to_ours, _ in mapping:
        our_param = ours.get(our_name) if our_name else None
        if our_param is None:
            report.note(f"{their_name:<44} -> {'(none)':<48} {tuple(theirs[their_name].shape)}  <-- NO COUNTERPART")
            report.diverged(f"structure: {their_name}", "theirs has this layer, ours has none")
            used_theirs.add(their_name)
            continue
        if their_name is None or their_name not in theirs:
            report.note(f"{'(none)':<44} -> {our_name:<48} {tuple(our_param.shape)}  <-- NO COUNTERPART")
            report.diverged(f"structure: {our_name}", "ours has this layer, theirs has none")
            used_ours.add(our_name)
            continue
        their_param = theirs[their_name]
        converted = to_ours(their_param.detach(), our_param) if to_ours else their_param.detach()
        stats = (f"{their_param.mean().item():+.3e} / {their_param.std().item():.3e} | "
                 f"{our_param.mean().item():+.3e} / {our_param.std().item():.3e}")
        if converted.shape != our_param.shape:
            report.note(f"{their_name:<44} -> {our_name:<48} {tuple(their_param.shape)} -> {tuple(our_param.shape)}"
                        "  <-- SHAPE MISMATCH")
            report.diverged(f"structure: {their_name} -> {our_name}",
                            f"{tuple(their_param.shape)} vs {tuple(our_param.shape)}")
        else:
            with torch.no_grad():
                our_param.copy_(converted)
            report.note(f"{their_name:<44} -> {our_name:<48} {tuple(their_param.shape)}  init {stats}")
        used_theirs.add(their_name)
        used_ours.add(our_name)
    for name in sorted(set(theirs) - used_theirs):
        report.note(f"theirs only: {name} {tuple(theirs[name].shape)} (not used in their forward: checked by its gradient below)")
    for name in sorted(set(ours) - used_ours):
        report.note(f"ours only: {name} {tuple(ours[name].shape)}")
        report.diverged(f"structure: {name}", "ours only")
    for name, buffer in their_model.named_buffers():
        report.note(f"their buffer {name} {tuple(buffer.shape)}")
    return mapping


# ----------------------------------------------------------------------------- capture
def capture_theirs(model):
    """Hooks recording their intermediates; returns the dict they fill."""
    seen = {}

    def keep(key):
        def hook(module, inputs, output):
            seen[key] = output
            seen[key + ".inputs"] = inputs
        return hook

    for direction in DIRECTIONS:
        getattr(model.cms, f"{direction}_trans").register_forward_hook(keep(f"cms.{direction}_trans"))
        getattr(model.cms, f"{direction}_self").register_forward_hook(keep(f"cms.{direction}_self"))
    model.cms.register_forward_hook(keep("cms"))
    for gcn in BRANCHES.values():
        module = getattr(model, gcn)
        module.register_forward_hook(keep(gcn))
        last = module.MLP_1 if hasattr(module, "MLP_1") else module.MLP
        last.register_forward_hook(keep(f"{gcn}.mlp"))
    for direction in DIRECTIONS:
        for stage in ("trans", "self"):
            layer = getattr(model.cms, f"{direction}_{stage}").layers[0]
            layer.fc1.register_forward_hook(keep(f"cms.{direction}_{stage}.fc1"))
    model.user_graph.register_forward_hook(keep("user_graph"))
    original = model.item_item

    def item_item(rep):
        out = original(rep)
        seen["item_item.in"], seen["item_item.out"] = rep, out
        return out

    model.item_item = item_item
    return seen


def capture_ours(model):
    seen = {}

    def keep(key):
        def hook(module, inputs, output):
            seen[key] = output
        return hook

    for direction in ("v_t", "t_v"):
        model.synergy_encoder.cross[direction].register_forward_hook(keep(f"cross.{direction}"))
        model.synergy_encoder.self_attention[direction].register_forward_hook(keep(f"self.{direction}"))
        model.synergy_encoder.cross[direction].block.ffn[0].register_forward_hook(keep(f"cross.{direction}.fc1"))
        model.synergy_encoder.self_attention[direction].block.ffn[0].register_forward_hook(
            keep(f"self.{direction}.fc1"))
    for name, branch in model.branches.items():
        branch.register_forward_hook(keep(f"branch.{name}"))
        branch.mlp.register_forward_hook(keep(f"mlp.{name}"))
    for method in ("branch_features", "fuse", "homogeneous_parts", "forward", "auxiliary_loss",
                   "recommendation_loss", "regularisation"):
        original = getattr(model, method)

        def wrapped(*a, _original=original, _method=method, **k):
            out = _original(*a, **k)
            seen[_method] = out
            return out

        setattr(model, method, wrapped)
    return seen


# ----------------------------------------------------------------------------- comparisons
def compare_graphs(report, their_model, our_model, ids):
    import torch

    report.section("2. graphs and features")
    report.tensor("features image (their v_feat / our image)", their_model.v_feat,
                  ids.items(our_model.modality_features["image"]))
    report.tensor("features text (their t_feat / our text)", their_model.t_feat,
                  ids.items(our_model.modality_features["text"]))
    # user–item adjacency: one propagation step of a random probe (theirs: PyG Base_gcn)
    generator = torch.Generator().manual_seed(0)
    n_nodes = their_model.num_user + their_model.num_item
    probe = torch.randn(n_nodes, 8, generator=generator)
    their_step = their_model.v_gcn.conv_embed_1(probe, their_model.edge_index)
    our_probe = torch.zeros(our_model.n_users + our_model.n_items, 8)
    our_probe[ids.nodes] = probe
    from recbole_mm.model.layers import propagate

    our_step = propagate(our_model.adjacency, our_probe, 1, combine="last")[ids.nodes]
    report.tensor("user-item adjacency A·X (random probe, 8 columns)", their_step, our_step)
    report.note(f"their training edges {their_model.edge_index.shape[1]} (both directions); "
                f"train interactions ours {our_model.interaction_matrix.nnz}")
    # kNN item graph
    their_items = their_model.mm_adj.to_dense()
    graph = our_model.item_graph
    our_items = graph.to_dense() if hasattr(graph, "to_dense") else graph
    our_items = our_items[ids.item][:, ids.item]
    report.tensor("item kNN graph G (dense, k=10, image weight 0.5)", their_items, our_items)
    report.note(f"nonzeros theirs {int((their_items != 0).sum())}, ours {int((our_items != 0).sum())}; "
                f"row sums theirs {their_items.sum(1).mean():.4f}, ours {our_items.sum(1).mean():.4f}")
    # user–user graph (theirs: the fixed top-40 list of this epoch; padded rows repeat neighbours)
    their_user = torch.zeros(their_model.num_user, their_model.num_user)
    index = torch.tensor(their_model.epoch_user_graph)
    their_user.scatter_add_(1, index, their_model.user_weight_matrix.float())
    our_user = our_model.user_graph.to_dense()[ids.user][:, ids.user]
    short = sum(1 for u in range(their_model.num_user) if len(their_model.user_graph_dict[u][0]) < their_model.k)
    report.note(f"users with fewer than k={their_model.k} co-interaction neighbours: {short} "
                "(theirs pads the list with random repeats, ours keeps each once)")
    report.tensor("user-user graph U (dense, top-40, softmax weights)", their_user, our_user)
    # the same weights per row, in another order of neighbours: ties among equal co-interaction
    # counts at the 40th place are broken by user id in their user_graph_dict, by torch.topk in ours
    report.tensor("user-user graph, each row's weights sorted", their_user.sort(dim=1).values,
                  our_user.sort(dim=1).values)
    differing = (their_user != 0) != (our_user != 0)
    rows = differing.any(dim=1)
    report.note(f"rows whose neighbour set differs: {int(rows.sum())} of {their_user.shape[0]}, "
                f"{int(differing.sum()) // 2} neighbours swapped for others of equal count (weight)")
    return their_user, our_user


def align_user_graph(report, their_model, our_model, ids, their_user):
    """Ours takes their user-user graph of this epoch (mapped), so that the tensors below
    compare the model, not the tie-breaking among equal co-interaction counts."""
    import torch

    dense = torch.zeros(our_model.n_users, our_model.n_users)
    dense[ids.user[:, None], ids.user[None, :]] = their_user
    our_model.user_graph = dense.to_sparse().coalesce()
    report.note("ours now uses their user-user graph (--own-user-graph keeps ours) for the comparisons below")


def to_double(report, their_model, our_model):
    """Both models and every tensor their forward reads in float64 (``--double``): what is
    left of a float32 difference is then rounding of the order of 1e-16, unless it is real."""
    import torch

    their_model.double()
    for attr in ("v_feat", "t_feat", "user_weight_matrix", "mm_adj"):
        setattr(their_model, attr, getattr(their_model, attr).double())
    our_model.double()
    our_model.modality_features = {name: value.double() for name, value in our_model.modality_features.items()}
    our_model.item_graph = our_model.item_graph.double()  # theirs is float32 too: equal values (section 2)
    # our user-item adjacency holds D^-1/2 A D^-1/2 rounded to float32, theirs (PyG) forms the
    # normalisation in the dtype of x: recompute ours in float64 from its own pattern
    adjacency = our_model.adjacency.coalesce()
    rows, cols = adjacency.indices()
    degree = torch.bincount(rows, minlength=adjacency.shape[0]).double()
    values = (degree[rows] * degree[cols]).rsqrt()
    report.note(f"our adjacency values vs 1/sqrt(d_r d_c) in float64: max|Δ| "
                f"{float((adjacency.values().double() - values).abs().max()):.1e} (float32 rounding)")
    our_model.adjacency = torch.sparse_coo_tensor(adjacency.indices(), values, adjacency.shape).coalesce()
    report.note("both sides now in float64 (--double)")


def their_batch(train_data, model):
    """Their first batch of epoch 0, as their trainer draws it."""
    model.pre_epoch_processing()
    iterator = iter(train_data)
    return next(iterator), iterator


def our_interaction(batch, ids, our_model):
    from recbole.data.interaction import Interaction

    return Interaction({our_model.USER_ID: ids.user[batch[0]], our_model.ITEM_ID: ids.item[batch[1]],
                        our_model.NEG_ITEM_ID: ids.item[batch[2]]})


def compare_forward(report, their_model, our_model, ids, batch, interaction, seen_t, seen_o, label):
    """Loss and intermediates of one batch, both sides (their model in train mode, as trained)."""
    report.section(f"3. forward, {label}")
    their_model.train()
    our_model.train()
    their_loss = their_model.calculate_loss(batch.clone())
    our_loss = our_model.calculate_loss(interaction)
    d = our_model.embedding_size
    for their_dir, our_dir in DIRECTIONS.items():
        report.tensor(f"cross-modal encoder {their_dir}_trans / cross.{our_dir}",
                      seen_t[f"cms.{their_dir}_trans"].squeeze(0), ids.items(seen_o[f"cross.{our_dir}"].squeeze(1)))
        report.tensor(f"self encoder {their_dir}_self / self.{our_dir}",
                      seen_t[f"cms.{their_dir}_self"].squeeze(0), ids.items(seen_o[f"self.{our_dir}"].squeeze(1)))
    for their_dir, our_dir in DIRECTIONS.items():
        for stage, our_stage in (("trans", "cross"), ("self", "self")):
            theirs_h = seen_t[f"cms.{their_dir}_{stage}.fc1"].squeeze(0)
            ours_h = ids.items(seen_o[f"{our_stage}.{our_dir}.fc1"].squeeze(1))
            flips = int(((theirs_h > 0) != (ours_h > 0)).sum())
            report.note(f"{their_dir}_{stage} FFN pre-activations (ReLU input): {flips} of {theirs_h.numel()} on "
                        f"opposite sides of 0, max|h| among them "
                        f"{float(theirs_h[(theirs_h > 0) != (ours_h > 0)].abs().max()) if flips else 0.0:.1e}")
    s_feat, loss_s = seen_t["cms"]
    features = seen_o["branch_features"]
    report.tensor("synergy features s = (h_vt + h_tv)/2", s_feat, ids.items(features["synergy"]))
    for ours_name, gcn in BRANCHES.items():
        report.tensor(f"branch {gcn} item MLP output", seen_t[f"{gcn}.mlp"], ids.items(seen_o[f"mlp.{ours_name}"]))
        report.tensor(f"branch {gcn} GCN output (users + items)", seen_t[gcn][0], seen_o[f"branch.{ours_name}"][ids.nodes])
    users_fused, items_fused = seen_o["fuse"]
    report.tensor("item fusion [V | S | T] (before the item graph)", seen_t["item_item.in"],
                  columns_in_their_order(ids.items(items_fused), d))
    report.tensor("user fusion w_u * [V | S | T] (before the user graph)", seen_t["user_graph.inputs"][0],
                  columns_in_their_order(ids.users(users_fused), d))
    user_part, item_part = seen_o["homogeneous_parts"]
    report.tensor("item graph aggregation G·i", seen_t["item_item.out"] - seen_t["item_item.in"],
                  columns_in_their_order(ids.items(item_part), d))
    report.tensor("user graph aggregation U·u", seen_t["user_graph"], columns_in_their_order(ids.users(user_part), d))
    users_final, items_final = seen_o["forward"]
    n_users = their_model.num_user
    report.tensor("final user representations", their_model.result_embed[:n_users],
                  columns_in_their_order(ids.users(users_final), d))
    report.tensor("final item representations", their_model.result_embed[n_users:],
                  columns_in_their_order(ids.items(items_final), d))
    bpr = -(torch_log2_sigmoid(their_model, batch))
    report.tensor("loss: BPR (log2)", bpr, seen_o["recommendation_loss"])
    report.tensor("loss: L_s InfoNCE over all items", loss_s, our_model.fusion_losses(our_model.ssl_item_ids(interaction))["synergy"])
    # a term of 1e-4 formed as a difference of O(1) losses on their side: float32 resolution ~1e-8
    report.tensor("loss: regularisation (preferences + w; theirs = total - BPR - λ L_s)",
                  their_loss - bpr - their_model.synergy_weight * loss_s, seen_o["regularisation"], tol=1e-3)
    report.value("loss: lambda of L_s", their_model.synergy_weight, our_model.fusion_weight)
    report.tensor("loss: total", their_loss, our_loss)
    return their_loss, our_loss


def torch_log2_sigmoid(model, batch):
    import torch

    users, pos, neg = batch[0], batch[1] + model.num_user, batch[2] + model.num_user
    embed = model.result_embed
    scores = (embed[users] * embed[pos]).sum(1) - (embed[users] * embed[neg]).sum(1)
    return torch.mean(torch.log2(torch.sigmoid(scores)))


def compare_gradients(report, their_model, our_model, mapping, label):
    report.section(f"3b. gradients, {label}")
    theirs = dict(their_model.named_parameters(remove_duplicate=False))
    ours = dict(our_model.named_parameters())
    for their_name, our_name, _, from_ours in mapping:
        if their_name is None or their_name not in theirs or our_name not in ours:
            continue
        their_grad, our_grad = theirs[their_name].grad, ours[our_name].grad
        if their_grad is None or our_grad is None:
            report.value(f"grad {their_name} exists", their_grad is not None, our_grad is not None)
            continue
        report.tensor(f"grad {their_name}", their_grad, from_ours(our_grad) if from_ours else our_grad)
    mapped = {row[0] for row in mapping}
    unused = [name for name, p in theirs.items() if name not in mapped]
    report.note("theirs only, gradient after backward: " + ", ".join(
        f"{name}={'None' if theirs[name].grad is None else float(theirs[name].grad.abs().max())}" for name in unused))


def compare_parameters(report, their_model, our_model, mapping, label, grads, lr):
    report.section(label)
    theirs = dict(their_model.named_parameters(remove_duplicate=False))
    ours = dict(our_model.named_parameters())
    for their_name, our_name, _, from_ours in mapping:
        if their_name is None or their_name not in theirs or our_name not in ours:
            continue
        mine = from_ours(ours[our_name]) if from_ours else ours[our_name]
        report.tensor(f"param {their_name}", theirs[their_name], mine, tol=1e-4)
        if mine.shape != theirs[their_name].shape:
            continue
        far = (theirs[their_name] - mine).abs() > lr / 2
        if far.any() and grads.get(their_name) is not None:
            report.note(f"  {int(far.sum())} elements moved apart by ~2 lr: Adam's first step is ±lr·sign(g), and "
                        f"there |g| ≤ {float(grads[their_name][far].abs().max()):.1e} (rounding level; "
                        f"the tensor's max |g| {float(grads[their_name].abs().max()):.1e})")


def compare_optimisers(report, their_trainer, our_trainer):
    report.section("4. optimiser and scheduler")
    their_group, our_group = their_trainer.optimizer.param_groups[0], our_trainer.optimizer.param_groups[0]
    report.value("optimiser class", type(their_trainer.optimizer).__name__, type(our_trainer.optimizer).__name__)
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        report.value(f"optimiser {key}", their_group.get(key), our_group.get(key))
    for key in ("foreach", "fused"):
        report.note(f"optimiser {key}: theirs {their_group.get(key)}, ours {our_group.get(key)} (implementation only)")
    their_factors = [their_trainer.lr_scheduler.lr_lambdas[0](e) for e in range(6)]
    our_factors = [our_trainer.lr_scheduler.lr_lambdas[0](e) for e in range(6)]
    report.value("lr factor, epochs 0..5", their_factors, our_factors)
    report.value("clip_grad_norm", their_trainer.clip_grad_norm, our_trainer.clip_grad_norm or None)


def compare_evaluation(report, their_model, our_model, ids, their_stale):
    """Their full_sort_predict ranks with ``result_embed`` of the last training forward, i.e.
    the representations computed before the epoch's last optimiser step; ours recomputes them
    in eval mode from the parameters being evaluated. Here: after one step, their stale
    scores (``their_stale``, from before the step) against ours."""
    import torch

    report.section("5. evaluation")
    their_model.eval()
    our_model.eval()
    users = torch.arange(min(200, their_model.num_user))
    with torch.no_grad():
        their_scores = their_model.full_sort_predict([users])  # result_embed of the latest forward
        our_users, our_items = our_model.forward()
    d = our_model.embedding_size
    our_scores = columns_in_their_order(ids.users(our_users), d)[users] @ columns_in_their_order(ids.items(our_items), d).T
    stale_scores = their_stale[0][users] @ their_stale[1].T
    report.tensor("scores: their full_sort_predict (latest forward = post-step) vs ours (eval forward)",
                  their_scores, our_scores)
    report.tensor("scores: their stale (pre-step, as in their evaluation) vs ours post-step [not a bug check]",
                  stale_scores, our_scores, tol=1.0)
    top_t = stale_scores.topk(20, dim=1).indices
    top_o = our_scores.topk(20, dim=1).indices
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(top_t, top_o)])
    report.note(f"top-20 overlap, stale (their evaluation) vs fresh (ours), 200 users, one step apart: {overlap:.4f}")


def compare_loaders(report, their_train, our_train, ids, our_model, iterator, first_batch):
    """One epoch of each side's training loader: rows, batches, negatives."""
    import torch

    report.section("6. training loader (one epoch each)")
    their_batches = [first_batch]
    while True:  # next(), not list(): iter() on their loader reshuffles its data frame
        try:
            their_batches.append(next(iterator))
        except StopIteration:
            break
    our_batches = list(our_train)
    their_rows = torch.cat([b for b in their_batches], dim=1)
    users = ids.user[their_rows[0]]
    pos, neg = ids.item[their_rows[1]], ids.item[their_rows[2]]
    our_users = torch.cat([b[our_model.USER_ID] for b in our_batches])
    our_pos = torch.cat([b[our_model.ITEM_ID] for b in our_batches])
    our_neg = torch.cat([b[our_model.NEG_ITEM_ID] for b in our_batches])
    report.value("batches per epoch", len(their_batches), len(our_batches))
    report.value("batch size (first batch)", int(their_batches[0].shape[1]), int(len(our_batches[0])))
    report.value("rows per epoch", int(their_rows.shape[1]), int(len(our_users)))
    same = Counter(zip(users.tolist(), pos.tolist())) == Counter(zip(our_users.tolist(), our_pos.tolist()))
    if not same:
        theirs_c, ours_c = Counter(zip(users.tolist(), pos.tolist())), Counter(zip(our_users.tolist(), our_pos.tolist()))
        only_t, only_o = theirs_c - ours_c, ours_c - theirs_c
        report.note(f"rows only in theirs {sum(only_t.values())} (e.g. {list(only_t.items())[:3]}), "
                    f"only in ours {sum(only_o.values())} (e.g. {list(only_o.items())[:3]})")
    report.value("each train (user, item) row once per epoch, same multiset", True, same, same=same)
    train = our_model.interaction_matrix.tocsr()
    in_train = lambda u, i: np.asarray(train[u.numpy().copy(), i.numpy().copy()]).ravel() > 0  # noqa: E731
    report.value("negatives that are a train positive of the user", int(in_train(users, neg).sum()),
                 int(in_train(our_users, our_neg).sum()))
    train_items = set(np.unique(train.nonzero()[1]).tolist())
    all_items = set(range(1, our_model.n_items))
    report.note(f"items: {len(all_items)}, with a train interaction: {len(train_items)}; theirs draws negatives "
                "uniformly from the train items, rejecting the user's own (TrainDataLoader._sample_neg_ids)")
    for side, negatives in (("theirs", neg), ("ours", our_neg)):
        counts = np.bincount(negatives.numpy(), minlength=our_model.n_items)[1:]
        outside = sum(int(counts[i - 1]) for i in all_items - train_items)
        expected = len(negatives) / len(all_items)
        report.note(f"{side}: negatives outside the train items {outside}; count per item mean {counts.mean():.2f} "
                    f"std {counts.std():.2f} (uniform: std ≈ {math.sqrt(expected):.2f})")
    corr = np.corrcoef(np.bincount(pos.numpy(), minlength=our_model.n_items)[1:],
                       np.bincount(neg.numpy(), minlength=our_model.n_items)[1:])[0, 1]
    report.note(f"their negatives vs item popularity, correlation {corr:.3f}")
    first_t, first_o = users[:2048].tolist(), our_users[:2048].tolist()
    report.note(f"order: first users theirs {first_t[:5]}, ours {first_o[:5]} (independent shuffles; "
                f"both reshuffle every epoch: theirs dataset.shuffle() in __iter__, ours RecBole's shuffle)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="dangkh/VIRAL: bare git dir, or a checkout")
    parser.add_argument("--ref-branch", default="master")
    parser.add_argument("--data", required=True, help="folder in MMRec layout")
    parser.add_argument("--config-file", default=os.path.join(REPO, "properties", "vlif_master.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="our side only")
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--tol", type=float, default=1e-4, help="relative max abs difference that counts")
    parser.add_argument("--ref-site", default=None, help="site-packages with torch_geometric (default: the reference venv's, beside DEFAULT_REF_PYTHON)")
    parser.add_argument("--skip-loaders", action="store_true")
    parser.add_argument("--double", action="store_true",
                        help="compare the forward, gradients and step in float64 (rounding then ~1e-16)")
    parser.add_argument("--own-user-graph", action="store_true",
                        help="keep our user-user graph (default: ours takes theirs after comparing them)")
    parser.add_argument("--keep-catalogue", action="store_true",
                        help="keep items without interactions (their catalogue then differs from ours)")
    args = parser.parse_args(argv)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    import torch

    torch.set_num_threads(1)
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        site = args.ref_site or next(iter(glob.glob(os.path.join(os.path.dirname(os.path.dirname(cr.DEFAULT_REF_PYTHON)), "lib", "python3*", "site-packages"))), None)
        if site:
            sys.path.append(site)
    # before reference_runner's stubs (torchvision etc.), which transformers, imported by
    # torch_geometric here, would trip over
    import torch_geometric.nn.conv  # noqa: F401
    args.data = os.path.abspath(args.data)
    args.config_file = os.path.abspath(args.config_file) if args.config_file else None
    workdir, data_root, name, files, src = prepare(args)
    shared, ours_values = values(args)
    print(f"workdir {workdir}; reference {args.reference} @ {args.ref_branch}; ours: {args.config_file} "
          f"+ {cr.parse_sets(args.set)} -> {ours_values}")
    cwd = os.getcwd()
    our_config, our_dataset, our_train, our_model, our_trainer = build_ours(data_root, name, files, args.seed,
                                                                            ours_values, args.config_file)
    their_config, their_train, their_model, their_trainer = build_reference(src, data_root, name, args.seed, shared)
    os.chdir(cwd)
    report = Report(args.tol)
    ids = IdMap(our_dataset, their_model.num_user, their_model.num_item)
    mapping = map_weights(report, their_model, our_model, ids)
    batch, iterator = their_batch(their_train, their_model)  # also draws their epoch-0 user graph
    their_user, _ = compare_graphs(report, their_model, our_model, ids)
    if not args.own_user_graph:
        align_user_graph(report, their_model, our_model, ids, their_user)
    if args.double:
        to_double(report, their_model, our_model)
    interaction = our_interaction(batch, ids, our_model)
    seen_t, seen_o = capture_theirs(their_model), capture_ours(our_model)
    their_trainer.optimizer.zero_grad()
    our_trainer.optimizer.zero_grad()
    their_loss, our_loss = compare_forward(report, their_model, our_model, ids, batch, interaction, seen_t, seen_o,
                                           "their first batch of epoch 0 (2048 rows)")
    their_loss.backward()
    our_loss.backward()
    compare_gradients(report, their_model, our_model, mapping, "the same batch")
    stale = (their_model.result_embed[:their_model.num_user].detach().clone(),
             their_model.result_embed[their_model.num_user:].detach().clone())
    compare_optimisers(report, their_trainer, our_trainer)
    grads = {name: p.grad.detach().clone() for name, p in their_model.named_parameters(remove_duplicate=False)
             if p.grad is not None}
    their_trainer.optimizer.step()
    our_trainer.optimizer.step()
    compare_parameters(report, their_model, our_model, mapping, "4b. parameters after one optimiser step (tol 1e-4)",
                       grads, their_trainer.optimizer.param_groups[0]["lr"])
    their_trainer.optimizer.zero_grad()
    our_trainer.optimizer.zero_grad()
    compare_forward(report, their_model, our_model, ids, batch, interaction, seen_t, seen_o, "after the step")
    compare_evaluation(report, their_model, our_model, ids, stale)
    if not args.skip_loaders:
        compare_loaders(report, their_train, our_train, ids, our_model, iterator, batch)
    print("\n== first divergence: " + (f"{report.first[0]}: {report.first[1]}" if report.first
                                       else f"none above relative {args.tol}"))
    print(f"   flagged, by section: {report.summary()}")
    return report


if __name__ == "__main__":
    main()
