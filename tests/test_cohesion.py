"""COHESION: the early fusion and the layer-refined GCN, the adaptive block scoring (values and
gradients against dense rewrites), the composite graphs, the loss, the ID-detach switch,
evaluation, and a run under GUIDER."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model.cohesion import COHESION, adaptive_block_scores
from recbole_mm.model.layers import layer_refined_propagate, row_cosine
from recbole_mm.trainer import GUIDERTrainer
from tests.conftest import REPO_ROOT, SMALL_SYNTHETIC, build_model, train_each, train_steps


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), COHESION)
    return config, loaders, model


def first_batch(loaders):
    return next(iter(loaders[0]))


def dense_layer_refined(adjacency, ego, n_layers, include_ego):
    """LayerGCN / COHESION GCN written out densely: e_l = cos(A e_{l-1}, e_0) · A e_{l-1}."""
    layers, layer = [ego], ego
    for _ in range(n_layers):
        layer = adjacency @ layer
        cosine = (layer * ego).sum(1) / (layer.norm(dim=1) * ego.norm(dim=1)).clamp_min(1e-8)
        layer = cosine[:, None] * layer
        layers.append(layer)
    return sum(layers if include_ego else layers[1:])


def symmetric_graph(n_nodes, seed):
    generator = torch.Generator().manual_seed(seed)
    upper = (torch.rand(n_nodes, n_nodes, generator=generator) < 0.3).float().triu(1)
    adjacency = upper + upper.T
    degree = adjacency.sum(1).clamp_min(1.0).pow(-0.5)
    return degree[:, None] * adjacency * degree[None, :]


@pytest.mark.parametrize("include_ego", [True, False])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_layer_refined_propagation_matches_a_dense_rewrite_in_value_and_gradient(include_ego, n_layers):
    adjacency = symmetric_graph(12, seed=n_layers)
    ego = torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    probe = torch.randn(12, 5)
    results = []
    for implementation in ("sparse", "dense"):
        x = ego.clone().requires_grad_()
        if implementation == "sparse":
            out = layer_refined_propagate(adjacency.to_sparse(), x, n_layers, include_ego=include_ego)
        else:
            out = dense_layer_refined(adjacency, x, n_layers, include_ego)
        (out * probe).sum().backward()
        results.append((out.detach(), x.grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)
    # the rescaling matters: plain LightGCN sums differ
    plain = sum(torch.linalg.matrix_power(adjacency, k) @ ego for k in range(0 if include_ego else 1, n_layers + 1))
    assert not torch.allclose(results[0][0], plain, atol=1e-3)


def test_row_cosine_equals_torchs_cosine_similarity_in_value_and_gradient():
    """The propagation's cosine is ``F.cosine_similarity``'s, zero rows (a node without an
    edge after propagation) included: value 0 and finite gradients."""
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(9, 6, generator=generator), torch.randn(9, 6, generator=generator)
    x[2], y[4] = 0.0, 0.0
    probe = torch.randn(9, generator=generator)
    grads = []
    for cosine in (row_cosine, lambda a, b: F.cosine_similarity(a, b, dim=-1)):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        value = cosine(a, b)
        (value * probe).sum().backward()
        grads.append((value.detach(), a.grad, b.grad))
    for ours, torchs in zip(*grads):
        assert torch.isfinite(ours).all()
        assert torch.allclose(ours, torchs, atol=1e-6)
    assert grads[0][0][2] == 0 and grads[0][0][4] == 0


def test_branch_is_early_fusion_then_layer_refined_gcn_on_the_dense_graph(run_config):
    """Every branch, ID included: sqrt((e² + MLP(f)²)/2 + 1e-8), rownorm([p; ·]), then the
    dense layer-refined sum of layers 0..L on the full graph; values and gradients."""
    _, _, model = build(run_config, n_ui_layers=2)
    adjacency = model.full_adjacency.to_dense()
    probe = torch.randn(model.n_users + model.n_items, model.embedding_size)
    for name, item_input in model.branch_inputs().items():
        branch = model.branches[name]
        parameters = [model.item_id_embedding, branch.preference, branch.mlp[0].weight, branch.mlp[2].weight]
        out = branch(model.full_adjacency, item_input, model.item_id_embedding)
        got = torch.autograd.grad((out * probe).sum(), parameters)

        projected = torch.nn.functional.leaky_relu(item_input @ branch.mlp[0].weight.T + branch.mlp[0].bias)
        projected = projected @ branch.mlp[2].weight.T + branch.mlp[2].bias
        fused = torch.sqrt((model.item_id_embedding ** 2 + projected ** 2) / 2 + 1e-8)
        nodes = torch.cat([branch.preference, fused])
        nodes = nodes / nodes.norm(dim=1, keepdim=True)
        expected = dense_layer_refined(adjacency, nodes, 2, include_ego=True)
        want = torch.autograd.grad((expected * probe).sum(), parameters)
        assert torch.allclose(out, expected, atol=1e-5), name
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-5), name
    assert model.branches["id"].mlp[0].in_features == model.embedding_size, "the ID branch projects e_i itself"


def test_adaptive_block_scores_match_a_dense_rewrite_in_value_and_gradient():
    generator = torch.Generator().manual_seed(0)
    n_blocks, width = 3, 4
    tensors = [torch.randn(6, n_blocks * width, generator=generator) for _ in range(3)]
    results = []
    for implementation in ("model", "dense"):
        user, pos, neg = (t.clone().requires_grad_() for t in tensors)
        if implementation == "model":
            pos_score, neg_score, weights = adaptive_block_scores(user, pos, neg, n_blocks)
        else:
            block = lambda t, k: t[:, k * width:(k + 1) * width]  # noqa: E731
            pos_blocks = torch.stack([(block(user, k) * block(pos, k)).sum(1) for k in range(n_blocks)], 1)
            neg_blocks = torch.stack([(block(user, k) * block(neg, k)).sum(1) for k in range(n_blocks)], 1)
            margins = (pos_blocks - neg_blocks).detach()
            weights = 1 - margins.exp() / margins.exp().sum(1, keepdim=True)
            tiled = weights.repeat_interleave(width, dim=1)  # the reference's tiled weight vector
            pos_score, neg_score = (user * pos * tiled).sum(1), (user * neg * tiled).sum(1)
        loss = -torch.nn.functional.logsigmoid(pos_score - neg_score).mean()
        loss.backward()
        results.append((pos_score.detach(), neg_score.detach(), weights, user.grad, pos.grad, neg.grad))
    for got, want in zip(*results):
        assert torch.allclose(got, want, atol=1e-6)
    assert not results[0][2].requires_grad and torch.allclose(results[0][2].sum(1), torch.full((6,), 2.0))


def test_forward_concatenates_branches_and_adds_user_and_item_graphs(run_config):
    _, _, model = build(run_config)
    model.eval()
    with torch.no_grad():
        outputs = model.branch_outputs()
        assert list(outputs) == ["id", "image", "text"]
        nodes = torch.cat(list(outputs.values()), dim=1)
        users, items = nodes[:model.n_users], nodes[model.n_users:]
        expected_users = users + model.user_graph.to_dense() @ users
        expected_items = items + model.item_graph.to_dense() @ items
        user_all, item_all = model.forward()
    assert torch.allclose(user_all, expected_users, atol=1e-5)
    assert torch.allclose(item_all, expected_items, atol=1e-5)
    # the user graph is redrawn each epoch and is row-stochastic where a user has neighbours
    before = model.user_graph.to_dense()
    rows = before.sum(1)
    assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-5)
    changed = False
    for _ in range(5):
        model.pre_epoch_processing()
        changed |= not torch.equal(before, model.user_graph.to_dense())
    assert changed
    assert model.state_dict()["user_graph"].is_sparse


def test_loss_is_log2_bpr_of_adaptive_scores_plus_modality_preference_and_weight_l2(run_config):
    _, loaders, model = build(run_config, reg_weight=0.5)
    batch = first_batch(loaders)
    users = batch[model.USER_ID]
    user_all, item_all = model.forward()
    u, pos, neg = user_all[users], item_all[batch[model.ITEM_ID]], item_all[batch[model.NEG_ITEM_ID]]
    d = model.embedding_size
    pos_blocks = torch.stack([(u[:, k * d:(k + 1) * d] * pos[:, k * d:(k + 1) * d]).sum(1) for k in range(3)], 1)
    neg_blocks = torch.stack([(u[:, k * d:(k + 1) * d] * neg[:, k * d:(k + 1) * d]).sum(1) for k in range(3)], 1)
    weights = 1 - torch.softmax((pos_blocks - neg_blocks).detach(), dim=1)
    diff = (weights * (pos_blocks - neg_blocks)).sum(1)
    expected = -torch.log2(torch.sigmoid(diff)).mean()
    expected = expected + 0.5 * ((model.branches["image"].preference[users] ** 2).mean()
                                 + (model.branches["text"].preference[users] ** 2).mean()
                                 + (model.user_modality_weight ** 2).mean())
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)
    # the plain dot product is a different loss: the block weights are in use
    plain = -torch.log2(torch.sigmoid((pos_blocks - neg_blocks).sum(1))).mean()
    assert not torch.allclose(plain, -torch.log2(torch.sigmoid(diff)).mean(), atol=1e-4)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config)
    losses = train_steps(model, first_batch(loaders), 10, lr=0.01, before_step=model.pre_epoch_processing)
    assert losses[-1] < 0.5 * losses[0]


def test_detach_id_quirk_changes_only_the_id_branch_gradient(run_config):
    _, loaders, fixed = build(run_config)
    _, _, quirk = build(run_config, cohesion_detach_id_quirk=True)
    quirk.load_state_dict(fixed.state_dict())
    batch = first_batch(loaders)
    grads, losses = {}, {}
    for name, model in (("fixed", fixed), ("quirk", quirk)):
        model.train()
        loss = model.calculate_loss(batch)
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    assert losses["fixed"] == pytest.approx(losses["quirk"], abs=1e-6), "the same values"
    for name, grad in grads["fixed"].items():
        other = grads["quirk"][name]
        if name.startswith("branches.id."):
            assert grad.abs().sum() > 0 and other is None, name
        elif name == "item_id_embedding":
            assert not torch.allclose(grad, other, atol=1e-7), "the ID branch no longer trains e_i"
            assert other.abs().sum() > 0, "e_i still learns through the modality branches' fusion"
        else:
            assert torch.allclose(grad, other, atol=1e-6), name


def test_eval_is_deterministic_on_the_full_graph_and_full_sort_is_the_dot_product(run_config):
    _, loaders, model = build(run_config, dropout=0.5)
    model.pre_epoch_processing()
    assert model.train_adjacency._nnz() < model.full_adjacency._nnz()
    model.train()
    with torch.no_grad():
        train_users, _ = model.forward()
    model.eval()
    users, items = model.forward()
    again_users, again_items = model.forward()
    assert torch.equal(users, again_users) and torch.equal(items, again_items)
    assert not torch.allclose(users, train_users), "training runs on the pruned graph, evaluation on the full one"
    interaction = next(iter(loaders[1]))[0]
    batch_users = interaction[model.USER_ID]
    scores = model.full_sort_predict(interaction).view(len(batch_users), -1)
    assert torch.allclose(scores, users[batch_users] @ items.T, atol=1e-5)
    pairs = model.predict({model.USER_ID: batch_users, model.ITEM_ID: torch.ones_like(batch_users)})
    assert torch.allclose(pairs, scores[:, 1], atol=1e-5)


def test_needs_image_and_text(run_config):
    from recbole_mm.errors import ConfigError
    with pytest.raises(ConfigError, match="'image' and 'text'"):
        build(run_config, modalities=["image"])


def test_cohesion_trains_under_guider(tmp_path):
    run = train_each(tmp_path, ["COHESION"], "synthetic", [os.path.join(REPO_ROOT, "properties", "guider.yaml")],
                     epochs=1, guider_teacher_pretrain_epochs=1,
                     synthetic_generator=dict(SMALL_SYNTHETIC))["COHESION"]
    assert isinstance(run["trainer"], GUIDERTrainer)
    assert math.isfinite(run["test_result"]["recall@20"]) and 0.0 <= run["test_result"]["recall@20"] <= 1.0
