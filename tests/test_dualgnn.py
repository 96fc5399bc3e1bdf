"""DualGNN: the user co-occurrence aggregation and the user/item fusion against dense rewrites of
MMRec's code (value and gradient), its switches, its errors, and a loss that falls."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.errors import ConfigError
from recbole_mm.model.dualgnn import DualGNN
from recbole_mm.model.layers import propagate
from tests.conftest import build_model, check_stale_eval_quirk, train_steps


def build(run_config, **overrides):
    return build_model(run_config(**overrides), DualGNN)


def first_batch(loaders):
    return next(iter(loaders[0]))


def reference_user_graph_dict(model, stored=200):
    """MMRec's preprocessing/dualgnn-gen-u-u-matrix.py, densely: user -> [neighbours, counts]
    (every user with a shared item, top ``stored`` by count)."""
    binary = (model.interaction_matrix.tocsr() > 0).astype(np.float32).toarray()
    counts = torch.from_numpy(binary @ binary.T)
    counts.fill_diagonal_(0)
    graph = {}
    for user in range(model.n_users):
        top = torch.topk(counts[user], int(min((counts[user] > 0).sum(), stored)))
        graph[user] = [top.indices.tolist(), top.values.tolist()]
    return graph


def reference_topk_sample(user_graph_dict, k):
    """MMRec's ``topk_sample`` (softmax user aggregation) for users with k or more neighbours or
    none; (U x k) neighbour index and weight matrices, and the users it covers exactly (the
    padded ones are random there: see the padding tests; a count tied across the k-th place is
    broken by ``torch.topk``'s order, which may differ between a row and a chunk of rows)."""
    index, weights, exact = [], torch.zeros(len(user_graph_dict), k), []
    for user in range(len(user_graph_dict)):
        neighbours, counts = user_graph_dict[user]
        if len(neighbours) == 0:
            index.append([0] * k)
            exact.append(user)
            continue
        if len(neighbours) < k:  # padded in MMRec: our fixed graph keeps the n (checked apart)
            index.append([0] * k)
            continue
        index.append(neighbours[:k])
        weights[user] = F.softmax(torch.tensor(counts[:k]), dim=0)
        if len(counts) == k or counts[k - 1] > counts[k]:  # a tie across the cut: either choice is MMRec's
            exact.append(user)
    return torch.tensor(index), weights, torch.tensor(exact)


def reference_user_graph_sample(features, index, weights):
    """MMRec's ``User_Graph_sample.forward``: a (U x k x d) gather and a batched (1 x k)(k x d)."""
    return torch.matmul(weights.unsqueeze(1), features[index]).squeeze()


@pytest.mark.parametrize("k", [2, 40])
def test_user_graph_aggregation_matches_mmrec_value_and_gradient(run_config, k):
    _, _, _, model = build(run_config, user_graph_k=k)
    graph_dict = reference_user_graph_dict(model)
    index, weights, exact = reference_topk_sample(graph_dict, k)
    assert len(exact) >= 3
    features = torch.randn(model.n_users, 8, requires_grad=True)
    probe = torch.randn(model.n_users, 8)
    ours = propagate(model.user_graph, features, model.n_uu_layers, combine="last")
    theirs = reference_user_graph_sample(features, index, weights)
    assert torch.allclose(ours[exact], theirs[exact], atol=1e-5)
    grad_ours, = torch.autograd.grad((ours[exact] * probe[exact]).sum(), features)
    grad_theirs, = torch.autograd.grad((theirs[exact] * probe[exact]).sum(), features)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-5)
    graph = model.user_graph.to_dense()
    counts = torch.from_numpy((model.interaction_matrix.tocsr() > 0).astype(np.float32).toarray())
    counts = counts @ counts.T
    for user, (neighbours, user_counts) in graph_dict.items():
        chosen = graph[user].nonzero().flatten()
        if len(neighbours) >= k:  # tied users too: the same counts and weights, whichever tied user
            assert sorted(counts[user, chosen].tolist()) == sorted(user_counts[:k])
            assert torch.allclose(graph[user, chosen].sort().values, weights[user].sort().values, atol=1e-6)
        else:  # short lists (0 < n < k): the n neighbours, softmax over their counts (no padding)
            assert sorted(chosen.tolist()) == sorted(neighbours)
            if neighbours:
                assert torch.allclose(graph[user, neighbours], F.softmax(torch.tensor(user_counts), 0), atol=1e-6)


def reference_representations(model, outputs, aliasing):
    """MMRec's DualGNN.forward from the branches' (U + I) x d outputs: ``representation = v_rep;
    representation += t_rep`` (in place: v_rep becomes v + t when ``aliasing``), the weighted sum
    ``matmul(cat(v_rep[:U], t_rep[:U], dim=2), weight_u)`` with weight_u U x 2 x 1, then
    ``user_rep + User_Graph_sample(user_rep)``."""
    v_rep = torch.cat(outputs["image"])
    t_rep = torch.cat(outputs["text"])
    representation = v_rep if aliasing else v_rep.clone()  # MMRec: the same tensor
    representation += t_rep
    U = model.n_users
    weight_u = model.user_modality_weight.unsqueeze(2)
    user_rep = torch.matmul(torch.cat((v_rep[:U].unsqueeze(2), t_rep[:U].unsqueeze(2)), dim=2), weight_u).squeeze()
    dense_graph = model.user_graph.to_dense()
    user_rep = user_rep + dense_graph @ user_rep
    return user_rep, representation[U:]


@pytest.mark.parametrize("quirk", [False, True])
def test_forward_matches_mmrec_weighted_sum_value_and_gradient(run_config, quirk):
    _, _, _, model = build(run_config, dualgnn_user_fusion_quirk=quirk)
    outputs = model.branch_outputs()
    users, items = model.add_homogeneous(*model.fuse(outputs))
    ref_users, ref_items = reference_representations(model, outputs, aliasing=quirk)
    assert torch.allclose(users, ref_users, atol=1e-5) and torch.allclose(items, ref_items, atol=1e-6)
    probe_u, probe_i = torch.randn_like(users), torch.randn_like(items)
    wanted = [model.user_modality_weight, model.branches["image"].preference, model.branches["text"].preference]
    ours = torch.autograd.grad((users * probe_u).sum() + (items * probe_i).sum(), wanted, retain_graph=True)
    theirs = torch.autograd.grad((ref_users * probe_u).sum() + (ref_items * probe_i).sum(), wanted)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)


def test_fusion_quirk_changes_users_only(run_config):
    _, _, _, fixed = build(run_config)
    _, _, _, quirk = build(run_config, dualgnn_user_fusion_quirk=True)
    with torch.no_grad():
        users_fixed, items_fixed = fixed.forward()
        users_quirk, items_quirk = quirk.forward()
    assert torch.equal(items_fixed, items_quirk)
    assert not torch.allclose(users_fixed, users_quirk, atol=1e-4)
    # the difference is w0 * t_u, aggregated like any user vector
    t_users = fixed.branch_outputs()["text"][0].detach()
    extra = fixed.user_modality_weight.detach()[:, :1] * t_users
    extra = extra + propagate(fixed.user_graph, extra, 1, combine="last")
    assert torch.allclose(users_quirk - users_fixed, extra, atol=1e-5)


def test_padding_quirk_reweights_only_short_lists_and_redraws_each_epoch(run_config):
    k = 120
    _, _, _, fixed = build(run_config, user_graph_k=k)
    _, _, _, quirk = build(run_config, user_graph_k=k, dualgnn_padding_quirk=True)
    graph_dict = reference_user_graph_dict(fixed)
    lengths = torch.tensor([len(graph_dict[u][0]) for u in range(fixed.n_users)])
    short = (lengths > 0) & (lengths < k)
    assert short.sum() > 3
    plain, padded = fixed.user_graph.to_dense(), quirk.user_graph.to_dense()
    assert torch.equal(plain[~short], padded[~short])
    assert torch.equal(plain[short] > 0, padded[short] > 0), "the same neighbours, reweighted"
    assert torch.allclose(padded.sum(1)[lengths > 0], torch.ones(int((lengths > 0).sum())), atol=1e-5)
    for user in torch.nonzero(short).flatten().tolist():  # weights m_j e^{c_j} / sum, m_j >= 1, sum m = k
        neighbours, counts = graph_dict[user]
        ratio = padded[user, neighbours] / torch.tensor(counts).exp()
        multiplicity = k * ratio / ratio.sum()
        assert torch.allclose(multiplicity, multiplicity.round(), atol=1e-3) and multiplicity.round().min() >= 1
    draws = []
    for _ in range(4):
        quirk.pre_epoch_processing()
        draws.append(quirk.user_graph.to_dense())
        fixed.pre_epoch_processing()
        assert torch.equal(fixed.user_graph.to_dense(), plain), "fixed top-k: never redrawn"
    assert any(not torch.equal(draws[0], other) for other in draws[1:]), "padding redrawn each epoch"


def test_stale_eval_quirk_ranks_with_the_last_training_forward(run_config):
    """True: evaluation scores with the representations of the last training step, before its
    update (MMRec's result_embed); False: a fresh forward. Training is the same either way."""
    check_stale_eval_quirk(lambda **config: build(run_config, **config), "dualgnn_stale_eval_quirk")


def test_mean_aggregation_uses_the_mean_adjacency(run_config):
    _, _, _, add = build(run_config)
    _, _, _, mean = build(run_config, aggr_mode="mean")
    rows = mean.adjacency.to_dense().sum(1)
    has_edges = add.adjacency.to_dense().sum(1) > 0
    assert torch.allclose(rows[has_edges], torch.ones(int(has_edges.sum())), atol=1e-5)
    dense_add = add.adjacency.to_dense()
    assert torch.allclose(dense_add, dense_add.T, atol=1e-6) and not torch.allclose(rows, dense_add.sum(1))


def test_no_item_graph_and_dragon_loss(run_config):
    _, _, loaders, model = build(run_config)
    assert model.item_graph is None
    batch = first_batch(loaders)
    users = batch[model.USER_ID]
    user_all, item_all = model.forward()
    pos = (user_all[users] * item_all[batch[model.ITEM_ID]]).sum(-1)
    neg = (user_all[users] * item_all[batch[model.NEG_ITEM_ID]]).sum(-1)
    reg = sum((model.branches[m].preference[users] ** 2).mean() for m in ("image", "text"))
    reg = reg + (model.user_modality_weight ** 2).mean()
    expected = -torch.log2(torch.sigmoid(pos - neg)).mean() + model.reg_weight * reg
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, _, loaders, model = build(run_config)
    losses = train_steps(model, first_batch(loaders), 30, lr=1e-2, before_step=model.pre_epoch_processing)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("overrides, words", [
    ({"aggr_mode": "max"}, "aggr_mode"),
    ({"dualgnn_padding_quirk": True, "user_graph_sampling": "resample"}, "user_graph_sampling: fixed"),
    ({"dualgnn_user_fusion_quirk": "yes"}, "dualgnn_user_fusion_quirk"),
])
def test_bad_config_is_a_clear_error(run_config, overrides, words):
    with pytest.raises(ConfigError, match=words):
        build(run_config, **overrides)
