"""SelfCF (SelfCF_ed on LightGCN): the score as the dot product of the concatenated views, the
loss against a dense rewrite, the random edge dropout of the training graph, positives only."""
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model.selfcf import SelfCF
from tests.conftest import build_model, train_steps


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), SelfCF)
    return config, loaders, model


def test_full_sort_score_is_predicted_user_times_item_plus_user_times_predicted_item(run_config):
    _, loaders, model = build(run_config, n_layers=2)
    model.eval()
    adjacency = model.full_adjacency.to_dense()
    ego = torch.cat([model.user_embedding, model.item_embedding]).detach()
    layers = [ego, adjacency @ ego, adjacency @ (adjacency @ ego)]
    users_h, items_h = torch.split(sum(layers) / 3, [model.n_users, model.n_items])
    interaction = next(iter(loaders[1]))[0]
    users = interaction[model.USER_ID]
    with torch.no_grad():
        expected = model.predictor(users_h[users]) @ items_h.T + users_h[users] @ model.predictor(items_h).T
    scores = model.full_sort_predict(interaction).view(len(users), -1)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_loss_is_half_the_two_cosine_terms_plus_half_squared_rows(run_config, monkeypatch):
    _, loaders, model = build(run_config, reg_weight=0.3, dropout=0.2)
    model.train()
    batch = next(iter(loaders[0]))
    full = model.full_adjacency
    monkeypatch.setattr(model, "dropped_adjacency", lambda: full)  # the same graph for both sides
    torch.manual_seed(3)
    loss = model.calculate_loss(batch)
    torch.manual_seed(3)
    user_all, item_all = model.online_embeddings(full)
    u, i = user_all[batch[model.USER_ID]], item_all[batch[model.ITEM_ID]]
    u_t, i_t = F.dropout(u.detach(), 0.2), F.dropout(i.detach(), 0.2)
    cos = lambda a, b: F.cosine_similarity(a, b, dim=-1).mean()  # noqa: E731
    expected = 0.5 * ((1 - cos(model.predictor(u), i_t)) + (1 - cos(model.predictor(i), u_t))) \
        + 0.3 * 0.5 * (u.square().sum() + i.square().sum())
    assert torch.allclose(loss, expected, atol=1e-6)


def test_training_graph_drops_edges_at_a_random_rate_and_rescales(run_config):
    _, _, model = build(run_config)
    torch.manual_seed(0)
    full_nnz, full_sum = model.full_adjacency._nnz(), model.edges.values.sum().item()
    kept_shares, sums = [], []
    for _ in range(30):
        matrix = model.dropped_adjacency().matrix
        kept_shares.append(matrix._nnz() / full_nnz)
        sums.append(matrix.values().sum().item() / full_sum)
    assert max(kept_shares) - min(kept_shares) > 0.3, "the rate is drawn per call, U[0, 1)"
    assert abs(sum(sums) / len(sums) - 1.0) < 0.1, "kept values scaled by 1 / (1 - rate): the expectation is A"


def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config)
    losses = train_steps(model, next(iter(loaders[0])), 30, lr=0.01)
    assert losses[-1] < 0.7 * losses[0]


def test_trains_on_positive_pairs_only(run_config):
    config, loaders, model = build(run_config)
    batch = next(iter(loaders[0]))
    assert model.NEG_ITEM_ID not in batch.interaction and not hasattr(model, "bpr_loss")
