"""GRCN: scatter softmax (both paths), attention convolution, refined edge weights, the routing
quirk, the loss, accuracy."""
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model import layers
from recbole_mm.model.grcn import GRCN, attention_conv
from recbole_mm.model.layers import EdgeGraph, scatter_max, scatter_softmax, scatter_sum
from tests.conftest import build_model, check_stale_eval_quirk, train_each, train_steps


def build(run_config, **overrides):
    return build_model(run_config(**overrides), GRCN)


def first_batch(loaders):
    return next(iter(loaders[0]))


class DenseTorchScatter:
    """Stand-in for torch_scatter: ``scatter(src, index, dim, dim_size, reduce)`` through a dense
    bucket-membership mask, a computation independent of the native index_add_/scatter_reduce."""

    @staticmethod
    def scatter(src, index, dim=0, dim_size=None, reduce="sum"):
        assert dim == 0
        member = index.unsqueeze(0) == torch.arange(dim_size).unsqueeze(1)  # (dim_size x E)
        flat = src.reshape(src.shape[0], -1)
        if reduce == "sum":
            out = member.to(src.dtype) @ flat
        elif reduce == "max":
            masked = torch.where(member.unsqueeze(-1), flat.unsqueeze(0), torch.tensor(float("-inf")))
            out = masked.max(dim=1).values
            out = torch.where(member.any(1, keepdim=True), out, torch.zeros_like(out))
        else:
            raise NotImplementedError(reduce)
        return out.reshape((dim_size,) + tuple(src.shape[1:]))


@pytest.fixture(params=["native", "torch_scatter"])
def scatter_path(request, monkeypatch):
    monkeypatch.setattr(layers, "torch_scatter", None if request.param == "native" else DenseTorchScatter())
    return request.param


def test_scatter_max_and_softmax(scatter_path):
    src = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0])
    index = torch.tensor([0, 0, 2, 2, 2])
    assert torch.equal(scatter_max(src, index, 4), torch.tensor([1.0, 0.0, 3.0, 0.0]))
    assert torch.equal(scatter_max(src.view(-1, 1).repeat(1, 2), index, 4)[:, 1], torch.tensor([1.0, 0.0, 3.0, 0.0]))
    soft = scatter_softmax(src, index, 4)
    assert torch.allclose(soft[:2], torch.softmax(src[:2], 0)) and torch.allclose(soft[2:], torch.softmax(src[2:], 0))
    assert torch.allclose(scatter_sum(soft, index, 4), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    big = scatter_softmax(torch.tensor([1000.0, 999.0]), torch.tensor([1, 1]), 2)
    assert torch.allclose(big, torch.softmax(torch.tensor([1000.0, 999.0]), 0)), "stable for large logits"


def test_attention_conv_matches_a_dense_masked_softmax():
    torch.manual_seed(0)
    nodes = torch.randn(6, 4)
    sources = torch.tensor([0, 1, 2, 3, 0, 5])
    targets = torch.tensor([3, 3, 3, 4, 4, 1])
    out, alpha = attention_conv(nodes, EdgeGraph(sources, targets, 6))
    adjacency = torch.zeros(6, 6, dtype=torch.bool)
    adjacency[targets, sources] = True
    logits = torch.where(adjacency, nodes @ nodes.T, torch.tensor(float("-inf")))
    weights = torch.nan_to_num(torch.softmax(logits, dim=1))   # rows without in-edges: zeros
    assert torch.allclose(out, weights @ nodes, atol=1e-6)
    assert torch.allclose(alpha, weights[targets, sources], atol=1e-6)


def test_both_scatter_paths_give_the_same_model_outputs(run_config, monkeypatch):
    _, _, loaders, model = build(run_config)
    batch = first_batch(loaders)
    results = []
    for backend in (None, DenseTorchScatter()):
        monkeypatch.setattr(layers, "torch_scatter", backend)
        model.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        results.append((loss.detach(), torch.cat(model.forward()).detach(), model.confidence.grad.clone()))
    for native, fake in zip(*results):
        assert torch.allclose(native, fake, atol=1e-5)


def test_real_torch_scatter_matches_the_native_path(monkeypatch):
    torch_scatter = pytest.importorskip("torch_scatter")
    torch.manual_seed(0)
    src, index = torch.randn(50, 3), torch.randint(0, 7, (50,))
    outputs = []
    for backend in (None, torch_scatter):
        monkeypatch.setattr(layers, "torch_scatter", backend)
        outputs.append((scatter_sum(src, index, 9), scatter_max(src, index, 9), scatter_softmax(src, index, 9)))
    for native, real in zip(*outputs):
        assert torch.allclose(native, real, atol=1e-6)


def test_edge_weights_are_pruned_max_of_attention_times_sender_confidence(run_config):
    _, _, _, model = build(run_config)
    n_edges = model.interaction_matrix.nnz
    assert torch.equal(model.sources[:n_edges], model.targets[n_edges:]), "user->item edges, then the reverse"
    assert bool((model.sources[:n_edges] < model.n_users).all())
    with torch.no_grad():
        model.confidence.normal_()
        outputs = model.content_outputs()
        alpha = torch.stack([outputs["image"][1], outputs["text"][1]], 1)
        raw = (alpha * model.confidence[model.sources]).max(1).values
        weights = model.edge_weights([outputs["image"][1], outputs["text"][1]])
        assert torch.allclose(weights, raw.clamp_min(0)) and bool((raw < 0).any())
        model.pruning = False
        assert torch.allclose(model.edge_weights([outputs["image"][1], outputs["text"][1]]), raw)
        # the ID branch: e + h1 + h2 with h_{l+1} = W h_l, W[t, s] = w_{s->t}
        n_nodes = model.n_users + model.n_items
        dense = torch.zeros(n_nodes, n_nodes).index_put_((model.targets, model.sources), weights, accumulate=True)
        e = F.normalize(model.id_embedding, dim=1)
        assert torch.allclose(model.id_representations(weights), e + dense @ e + dense @ dense @ e, atol=1e-5)
        users, items = model.forward()
        assert users.shape[1] == items.shape[1] == 3 * 64


def test_routing_updates_users_from_their_items(run_config):
    _, _, _, model = build(run_config)
    branch = model.branches["text"]
    with torch.no_grad():
        items = branch.item_vectors(model.modality_features["text"])
        routed = branch.route(items, model.routing_graph)
        start = F.normalize(branch.preference, dim=1)
    active = torch.from_numpy(model.interaction_matrix.row).unique()
    idle = torch.ones(model.n_users, dtype=torch.bool)
    idle[active] = False
    assert not torch.allclose(routed[active], start[active], atol=1e-3)
    assert torch.allclose(routed[idle], start[idle], atol=1e-6), "a user without items keeps its preference"


def test_routing_quirk_makes_routing_a_no_op_and_changes_nothing_else(run_config):
    models = {
        (quirk, rounds): build(run_config, grcn_routing_quirk=quirk, n_routing=rounds)[3]
        for quirk, rounds in [(False, 3), (True, 3), (False, 0)]
    }
    fixed, quirk, no_routing = models[(False, 3)], models[(True, 3)], models[(False, 0)]
    state = fixed.state_dict()
    assert state.keys() == quirk.state_dict().keys() == no_routing.state_dict().keys()
    for model in (quirk, no_routing):
        model.load_state_dict(state)
    with torch.no_grad():
        for name, branch in quirk.branches.items():
            items = branch.item_vectors(quirk.modality_features[name])
            assert torch.equal(items, fixed.branches[name].item_vectors(fixed.modality_features[name]))
            start = F.normalize(branch.preference, dim=1)
            assert torch.allclose(branch.route(items, quirk.routing_graph), start, atol=1e-6)
            routed = fixed.branches[name].route(items, fixed.routing_graph)
            assert not torch.allclose(routed, start, atol=1e-3)
        # the quirk = no routing at all, everywhere (users, items, edge weights) ...
        for got, expected in zip(quirk.forward(), no_routing.forward()):
            assert torch.allclose(got, expected, atol=1e-5)
        # ... and with the routing fixed, the final convolution and everything after it still
        # run on the same edges: same graph, only the routed user preferences differ
        assert torch.equal(quirk.sources, fixed.sources) and torch.equal(quirk.targets, fixed.targets)
        assert not torch.allclose(fixed.forward()[0], quirk.forward()[0], atol=1e-4)


def test_stale_eval_quirk_ranks_with_the_last_training_forward(run_config):
    """True: evaluation scores with the representations of the last training step, before its
    update (MMRec's ``self.result``); False: a fresh forward. Training is the same either way."""
    check_stale_eval_quirk(lambda **config: build(run_config, **config), "grcn_stale_eval_quirk")


def test_loss_is_bpr_plus_mmrec_regularisation(run_config):
    _, _, loaders, model = build(run_config, reg_weight=0.5)
    batch = first_batch(loaders)
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    user_all, item_all = model.forward()
    diff = (user_all[users] * (item_all[pos] - item_all[neg])).sum(-1)
    ids, user_rows = model.id_embedding, users.repeat_interleave(2)
    items = torch.stack([pos, neg], 1).view(-1) + model.n_users
    reg = (ids[user_rows] ** 2 + ids[items] ** 2).mean() + (model.branches["image"].preference ** 2).mean()
    reg = reg + sum((b.preference[user_rows] ** 2).mean() for b in model.branches.values())
    expected = -torch.log(torch.sigmoid(diff)).mean() + 0.5 * reg
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, _, loaders, model = build(run_config)
    losses = train_steps(model, first_batch(loaders), 15)
    assert losses[-1] < 0.8 * losses[0], losses
    assert model.confidence.grad is not None and model.confidence.grad.abs().sum() > 0, "the refinement learns"


def test_grcn_beats_popularity(tmp_path):
    runs = train_each(tmp_path, ["GRCN", "Pop"], "synthetic", epochs=1)
    valid = {name: run["best_valid_result"]["recall@20"] for name, run in runs.items()}
    assert valid["GRCN"] > 1.5 * valid["Pop"], valid
