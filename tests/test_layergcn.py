"""LayerGCN: the layer-refined propagation of the model against a dense rewrite (value and
gradient), MMRec's loss (summed BPR + ½ Σ squared ego rows), the alternating edge dropout and
its switch, evaluation on the full graph, and a run under GUIDER."""
import math
import os

import pytest
import torch

from recbole_mm.errors import ConfigError
from recbole_mm.model.layergcn import LayerGCN
from recbole_mm.trainer import GUIDERTrainer
from tests.conftest import REPO_ROOT, SMALL_SYNTHETIC, build_model, train_each, train_steps
from tests.test_cohesion import dense_layer_refined


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), LayerGCN)
    return config, loaders, model


def first_batch(loaders):
    return next(iter(loaders[0]))


def test_forward_is_the_sum_of_refined_layers_one_to_L_on_the_dense_graph(run_config):
    _, _, model = build(run_config, n_layers=3)
    model.eval()
    adjacency = model.full_adjacency.to_dense()
    probe = torch.randn(model.n_users + model.n_items, model.embedding_size)
    parameters = [model.user_embedding, model.item_embedding]
    got = torch.cat(model.forward())
    got_grads = torch.autograd.grad((got * probe).sum(), parameters)
    ego = torch.cat(parameters)
    expected = dense_layer_refined(adjacency, ego, 3, include_ego=False)
    want_grads = torch.autograd.grad((expected * probe).sum(), parameters)
    assert torch.allclose(got, expected, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-5)
    with_ego = dense_layer_refined(adjacency, ego, 3, include_ego=True)
    assert not torch.allclose(got, with_ego, atol=1e-3), "the ego layer is not in the sum"


def test_loss_is_summed_bpr_plus_half_squared_ego_rows(run_config):
    _, loaders, model = build(run_config, reg_weight=0.3)
    model.train()
    batch = first_batch(loaders)
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    user_all, item_all = model.forward()
    margin = (user_all[users] * (item_all[pos] - item_all[neg])).sum(1)
    squares = (model.user_embedding[users] ** 2).sum() + (model.item_embedding[pos] ** 2).sum() \
        + (model.item_embedding[neg] ** 2).sum()
    expected = -torch.nn.functional.logsigmoid(margin).sum() + 0.3 * 0.5 * squares
    assert torch.allclose(model.calculate_loss(batch), expected, rtol=1e-5)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config, dropout=0.1)
    # slow to start: the layers rescale by cosines of small Xavier rows
    losses = train_steps(model, first_batch(loaders), 40, lr=0.01, before_step=model.pre_epoch_processing)
    assert losses[-1] < 0.6 * losses[0]


def kept_edge_degree_weight(model):
    """Mean 1/sqrt(d_u d_i) (full-graph degrees) of the edges in the current training graph:
    higher after a degree-sensitive draw than after a uniform one."""
    sampler = model.edge_sampler
    indices = model.train_adjacency.matrix.to_sparse_coo().indices()
    kept = indices[:, indices[0] < model.n_users]
    weight = {(u, i): w for u, i, w in zip(sampler.users.tolist(), sampler.items.tolist(), sampler.edge_weight.tolist())}
    return sum(weight[(u, i - model.n_users)] for u, i in kept.T.tolist()) / kept.shape[1]


@pytest.mark.parametrize("pruning, expected", [("alternate", ["degree", "random"] * 2),
                                               ("degree", ["degree"] * 4), ("random", ["random"] * 4)])
def test_edge_pruning_draws_degree_sensitive_and_uniform_as_named(run_config, monkeypatch, pruning, expected):
    _, _, model = build(run_config, dropout=0.5, edge_pruning=pruning)
    draws = []
    degree_draw = model.edge_sampler.sample_edges
    monkeypatch.setattr(model.edge_sampler, "sample_edges", lambda: draws.append("degree") or degree_draw())
    real_randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: draws.append("random") or real_randperm(*a, **k))
    for _ in range(4):
        model.pre_epoch_processing()
        assert model.train_adjacency._nnz() == 2 * model.edge_sampler.n_keep
    assert draws == expected


def test_degree_sensitive_draws_favour_low_degree_edges(run_config):
    _, _, model = build(run_config, dropout=0.5, edge_pruning="alternate")
    model.pre_epoch_processing()
    degree_mean = kept_edge_degree_weight(model)
    model.pre_epoch_processing()
    uniform_mean = kept_edge_degree_weight(model)
    assert degree_mean > 1.05 * uniform_mean


def test_without_dropout_training_uses_the_full_graph_and_eval_is_cached(run_config):
    _, loaders, model = build(run_config)
    model.pre_epoch_processing()
    assert model.edge_sampler is None and model.train_adjacency is model.full_adjacency
    model.eval()
    interaction = next(iter(loaders[1]))[0]
    users = interaction[model.USER_ID]
    user_all, item_all = model.forward()
    scores = model.full_sort_predict(interaction).view(len(users), -1)
    assert torch.allclose(scores, user_all[users] @ item_all.T, atol=1e-5)


def test_unknown_edge_pruning_is_refused(run_config):
    with pytest.raises(ConfigError, match="edge_pruning"):
        build(run_config, edge_pruning="sometimes")


def test_layergcn_trains_under_guider(tmp_path):
    run = train_each(tmp_path, ["LayerGCN"], "synthetic", [os.path.join(REPO_ROOT, "properties", "guider.yaml")],
                     epochs=1, guider_teacher_pretrain_epochs=1,
                     synthetic_generator=dict(SMALL_SYNTHETIC))["LayerGCN"]
    assert isinstance(run["trainer"], GUIDERTrainer)
    assert math.isfinite(run["test_result"]["recall@20"])
