"""DAMRS: the denoised item graphs, the preference-guided BPR weights and the two alignment terms
against dense rewrites of MMRec's ``damrs.py`` / the authors' ``build_iib_graph.py`` (value, and
gradient where there is one), the whole loss against a dense rewrite, the cache, the refusals."""
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recbole_mm.data.graphs import consistent_knn_graphs, cooccurrence_item_graph
from recbole_mm.errors import ConfigError
from recbole_mm.model.damrs import (DAMRS, feedback_weights, label_distributions, neighbour_discrimination,
                                    pseudo_positives, symmetric_bernoulli_kl, weighted_bpr)
from tests.conftest import build_model, train_steps


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), DAMRS)
    return config, loaders, model


# ---------------------------------------------------------------- dense rewrites of the reference
def reference_normalized(rows, cols, n):
    """``compute_normalized_laplacian``: weight 1 per entry, row sums + 1e-7 on both sides."""
    adj = torch.zeros(n, n)
    adj[rows, cols] = 1.0
    inv = (adj.sum(1) + 1e-7).pow(-0.5)
    return adj * inv[:, None] * inv[None, :]


def reference_knn_graphs(v, t, k):
    """``get_knn_adj_mat``: full similarity matrices, zeroed below either mean, per-row top-k."""
    v_sim = F.normalize(v, dim=1) @ F.normalize(v, dim=1).T
    t_sim = F.normalize(t, dim=1) @ F.normalize(t, dim=1).T
    mask_v, mask_t = v_sim < v_sim.mean(), t_sim < t_sim.mean()
    for sim in (v_sim, t_sim):
        sim[mask_v] = 0
        sim[mask_t] = 0
    rows, v_cols, t_cols = [], [], []
    for i in range(len(v)):
        count = min(len(torch.nonzero(t_sim[i])), k)
        v_cols.append(torch.topk(v_sim[i], count).indices)
        t_cols.append(torch.topk(t_sim[i], count).indices)
        rows.append(torch.full((count,), i))
    rows = torch.cat(rows)
    return reference_normalized(rows, torch.cat(v_cols), len(v)), reference_normalized(rows, torch.cat(t_cols), len(v))


def reference_cooccurrence_counts(inter):
    """``gen_item_matrix``: users in common of every item pair, kept from 2 on."""
    users_of = [set(np.nonzero(inter[:, j])[0]) for j in range(inter.shape[1])]
    n = inter.shape[1]
    counts = torch.zeros(n, n)
    for a in range(n):
        for b in range(a + 1, n):
            common = len(users_of[a] & users_of[b])
            if common >= 2:
                counts[a, b] = counts[b, a] = common
    return counts


def reference_label(emb, aug):
    return torch.softmax(F.normalize(emb, dim=1) @ F.normalize(aug, dim=1).T, dim=1)


def reference_pseudo(p1, p2, p3):
    mm = torch.topk(p1 + p2 + p3 + p3, 10, dim=-1).indices
    prob = p3.clone()
    prob.scatter_(1, mm, 0)
    return mm, torch.topk(prob, 10, dim=-1).indices


def reference_neighbour(mm, single, emb, aug, temperature=0.2):
    n_aug, n_emb = F.normalize(aug, dim=1), F.normalize(emb, dim=1)
    tiled = n_emb.reshape(-1, 1, n_emb.shape[1]).tile(1, 10, 1)
    mm_score = torch.exp((tiled * n_aug[mm]).sum(2) / temperature).sum(1)
    s_score = torch.exp((tiled * n_aug[single]).sum(2) / temperature).sum(1)
    ttl = torch.exp(n_emb @ n_aug.T / temperature).sum(1)
    return (-torch.log(mm_score / ttl + 10e-10) - torch.log(s_score / (ttl - mm_score) + 10e-10)).mean()


def reference_kl(p1, p2):
    return p1 * torch.log(p1) - p1 * torch.log(p2) + (1 - p1) * torch.log(1 - p1) - (1 - p1) * torch.log(1 - p2)


def reference_weights(u, h_t, h_v, h_s, pos, neg):
    """``get_weight_modal``, with its p_v / p_s naming as written."""
    def pref(h, items):
        return (u * F.normalize(h[items], dim=-1)).sum(1)
    p_tensor = torch.sigmoid(torch.stack([pref(h_t, pos), pref(h_s, pos), pref(h_v, pos)]))
    p_var, p_mean = torch.var(p_tensor, dim=0).data, torch.mean(p_tensor, dim=0).data
    p_max, _ = torch.max(p_tensor, dim=0)
    n_mean = torch.mean(torch.sigmoid(torch.stack([pref(h_t, neg), pref(h_s, neg), pref(h_v, neg)]))).data
    pos_w = torch.clamp(p_mean * torch.pow(torch.exp(-p_var), 2.0), 0, 1).data
    mask = torch.zeros_like(p_mean)
    mask[p_mean < n_mean] = 1
    neg_w = torch.clamp((p_max - n_mean) * mask, 0, 1).data
    return pos_w, neg_w


def reference_bpr(u, pos_e, neg_e, pos_w, neg_w):
    pos_s, neg_s = (u * pos_e).sum(1), (u * neg_e).sum(1)
    return -torch.mean(torch.log(torch.sigmoid(pos_s - neg_s)) * pos_w + torch.log(torch.sigmoid(neg_s - pos_s)) * neg_w)


# ---------------------------------------------------------------- the item graphs
def test_consistent_knn_graphs_match_the_reference_construction():
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(41, 6, generator=generator) + 0.3
    t = torch.randn(41, 5, generator=generator) + 0.2
    expected_v, expected_t = reference_knn_graphs(v[1:], t[1:], k=7)
    # a small budget: several row chunks
    graphs = consistent_knn_graphs({"image": v, "text": t}, 7, budget_elements=300)
    for name, expected in (("image", expected_v), ("text", expected_t)):
        dense = graphs[name].to_dense()
        assert dense[0].abs().sum() == 0 and dense[:, 0].abs().sum() == 0  # padding row / column empty
        assert torch.allclose(dense[1:, 1:], expected, atol=1e-6), name
    rows_kept = (expected_v > 0).sum(1)
    assert rows_kept.max() == 7 and rows_kept.min() < 7  # both branches of min(k, survivors) exercised


def random_interactions(seed, n_users=30, n_items=25, density=0.3):
    rng = np.random.default_rng(seed)
    inter = (rng.random((n_users, n_items)) < density).astype(np.float32)
    inter[:, 0] = 0.0  # padding item
    return inter


def test_cooccurrence_graph_keeps_every_eligible_neighbour_as_the_reference():
    inter = random_interactions(1, density=0.12)
    counts = reference_cooccurrence_counts(inter)
    rows, cols = [], []
    for i in range(1, inter.shape[1]):  # get_session_adj: self loop + the file's list
        chosen = torch.topk(counts[i], int((counts[i] > 0).sum())).indices  # every count >= 2 (k larger)
        rows += [i] * (1 + len(chosen))
        cols += [i] + chosen.tolist()
    expected = reference_normalized(torch.tensor(rows), torch.tensor(cols), inter.shape[1])
    graph = cooccurrence_item_graph(sp.coo_matrix(inter), top_k=1000, min_count=2).to_dense()
    assert torch.allclose(graph, expected, atol=1e-6)
    assert (expected > 0).sum(1)[1:].max() > 2  # some item has several neighbours


def test_cooccurrence_graph_keeps_the_top_k_counts():
    inter = random_interactions(2, density=0.3)
    counts = reference_cooccurrence_counts(inter)
    graph = cooccurrence_item_graph(sp.coo_matrix(inter), top_k=2, min_count=2).to_dense()
    degree = (graph > 0).sum(1)
    for i in range(1, inter.shape[1]):
        eligible = int((counts[i] > 0).sum())
        assert degree[i] == 1 + min(2, eligible)
        assert graph[i, i] > 0
        chosen = [j for j in torch.nonzero(graph[i]).flatten().tolist() if j != i]
        # the counts chosen are the two largest (ties may pick other items of the same count)
        assert sorted(counts[i, chosen].tolist()) == sorted(torch.topk(counts[i], min(2, eligible)).values.tolist())
    rows, cols = torch.nonzero(graph, as_tuple=True)
    assert torch.allclose(graph[rows, cols], (degree[rows] * degree[cols]).float().pow(-0.5))
    assert degree[0] == 0


# ---------------------------------------------------------------- the loss terms
def test_feedback_weights_match_the_reference_and_carry_no_gradient():
    generator = torch.Generator().manual_seed(3)
    n_items, batch = 15, 64
    h_t, h_v, h_s = (torch.randn(n_items, 8, generator=generator) for _ in range(3))
    u = 2.0 * torch.randn(batch, 8, generator=generator, requires_grad=True)
    pos = torch.randint(0, n_items, (batch,), generator=generator)
    neg = torch.randint(0, n_items, (batch,), generator=generator)
    expected_pos, expected_neg = reference_weights(u, h_t, h_v, h_s, pos, neg)
    got_pos, got_neg = feedback_weights(u, torch.stack([h[pos] for h in (h_t, h_v, h_s)]),
                                        torch.stack([h[neg] for h in (h_t, h_v, h_s)]))
    assert torch.allclose(got_pos, expected_pos, atol=1e-6)
    assert torch.allclose(got_neg, expected_neg, atol=1e-6)
    assert (got_neg > 0).any() and (got_neg == 0).any()  # the mask both ways
    assert not got_pos.requires_grad and not got_neg.requires_grad


def test_weighted_bpr_matches_the_reference_in_value_and_gradient():
    generator = torch.Generator().manual_seed(4)
    u = torch.randn(32, 8, generator=generator, requires_grad=True)
    pos_e = torch.randn(32, 8, generator=generator, requires_grad=True)
    neg_e = torch.randn(32, 8, generator=generator, requires_grad=True)
    pos_w, neg_w = torch.rand(32, generator=generator), torch.rand(32, generator=generator) * (torch.rand(32) < 0.5)
    expected = reference_bpr(u, pos_e, neg_e, pos_w, neg_w)
    got = weighted_bpr((u * pos_e).sum(1), (u * neg_e).sum(1), pos_w, neg_w)
    assert torch.allclose(got, expected, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got, (u, pos_e, neg_e)), torch.autograd.grad(expected, (u, pos_e, neg_e))):
        assert torch.allclose(a, b, atol=1e-6)


def test_symmetric_kl_matches_the_reference_in_value_and_gradient():
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(7, 9, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(7, 9, dtype=torch.float64, generator=generator, requires_grad=True)
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    expected = torch.mean(reference_kl(p, q) + reference_kl(q, p))
    got = symmetric_bernoulli_kl(a, b)
    assert torch.allclose(got, expected, atol=1e-12)
    for x, y in zip(torch.autograd.grad(got, (a, b)), torch.autograd.grad(expected, (a, b))):
        assert torch.allclose(x, y, atol=1e-12)
    assert torch.isfinite(symmetric_bernoulli_kl(torch.tensor([40.0]), torch.tensor([-40.0])))  # no log(1 - 1)


def test_neighbour_discrimination_matches_the_reference_in_value_and_gradient():
    generator = torch.Generator().manual_seed(6)
    tables = [torch.randn(50, 8, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(3)]
    batch = torch.tensor([3, 7, 11, 20, 41])
    labels = [reference_label(h[batch], h) for h in tables]  # t, v, s
    expected = 0.0
    got = 0.0
    for own, (o1, o2) in ((2, (0, 1)), (1, (0, 2)), (0, (1, 2))):  # session, visual, text as the reference
        mm, single = reference_pseudo(labels[o1], labels[o2], labels[own])
        expected = expected + reference_neighbour(mm, single, tables[own][batch], tables[own])
        multi, single_ours = pseudo_positives(labels[own].detach(), labels[o1].detach(), labels[o2].detach(), 10)
        assert torch.equal(multi, mm) and torch.equal(single_ours, single)
        got = got + neighbour_discrimination(tables[own][batch], tables[own], multi, single_ours)
    assert torch.allclose(got, expected, atol=1e-10)
    for x, y in zip(torch.autograd.grad(got, tables), torch.autograd.grad(expected, tables)):
        assert torch.allclose(x, y, atol=1e-10)


def test_the_whole_loss_matches_a_dense_rewrite(run_config):
    _, loaders, model = build(run_config)
    model.train()
    batch = next(iter(loaders[0]))
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    params = (model.user_embedding, model.item_id_embedding)

    a = model.adjacency.to_dense()
    ego = torch.cat(params)
    layers = [ego]
    for _ in range(model.n_ui_layers):
        layers.append(a @ layers[-1])
    user_all, item_all = torch.split(torch.stack(layers).mean(0), [model.n_users, model.n_items])
    h_t, h_v, h_s = (model.item_graphs[name].to_dense() @ model.item_id_embedding for name in ("text", "image", "behaviour"))
    u_id, i_id = torch.unique(users), torch.unique(torch.cat([pos, neg]))
    # the reference's calculate_loss over the non-padding items (its item j is our j + 1)
    t, v, s = h_t[1:], h_v[1:], h_s[1:]
    lt, lv, ls = reference_label(h_t[i_id], t), reference_label(h_v[i_id], v), reference_label(h_s[i_id], s)
    nd = (reference_neighbour(*reference_pseudo(lt, lv, ls), h_s[i_id], s)
          + reference_neighbour(*reference_pseudo(lt, ls, lv), h_v[i_id], v)
          + reference_neighbour(*reference_pseudo(lv, ls, lt), h_t[i_id], t)) / 3.0
    mean_h = (h_t + h_s + h_v) / 3.0
    p_g = torch.sigmoid(user_all[u_id] @ F.normalize(item_all[i_id], dim=-1).T)
    p_t = torch.sigmoid(user_all[u_id] @ F.normalize(mean_h[i_id], dim=-1).T)
    kl = torch.mean(reference_kl(p_g, p_t) + reference_kl(p_t, p_g))
    pos_w, neg_w = reference_weights(user_all[users], h_t, h_v, h_s, pos, neg)
    final = item_all + mean_h
    bpr = reference_bpr(user_all[users], final[pos], final[neg], pos_w, neg_w)
    expected = bpr + model.neighbor_weight * nd + model.kl_weight * kl

    got = model.calculate_loss(batch)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    for x, y in zip(torch.autograd.grad(got, params), torch.autograd.grad(expected, params)):
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("key", ["kl_weight", "neighbor_weight"])
def test_each_weight_scales_its_own_term_and_zero_drops_it(run_config, key):
    _, loaders, model = build(run_config)
    batch = next(iter(loaders[0]))
    model.train()

    def loss(**weights):
        model.kl_weight, model.neighbor_weight = weights.get("kl_weight", 0.0), weights.get("neighbor_weight", 0.0)
        return model.calculate_loss(batch).item()

    other = "neighbor_weight" if key == "kl_weight" else "kl_weight"
    term = loss(**{key: 1.0}) - loss()
    assert abs(term) > 1e-6
    assert loss(**{key: 0.5, other: 1.0}) - loss(**{other: 1.0}) == pytest.approx(0.5 * term, rel=1e-4, abs=1e-7)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config)
    losses = train_steps(model, next(iter(loaders[0])), 15, lr=0.03)
    assert losses[-1] < 0.8 * losses[0]


def test_scores_are_users_against_ids_plus_the_view_mean(run_config):
    _, loaders, model = build(run_config)
    batch = next(iter(loaders[0]))
    model.eval()
    users, items, views = model.components()
    expected = users[batch[model.USER_ID]] @ (items + sum(views.values()) / 3).T
    assert torch.allclose(model.full_sort_predict(batch).reshape(expected.shape), expected, atol=1e-5)


def test_the_graphs_are_cached_and_read_back(run_config, tmp_path):
    cache = str(tmp_path / "cache")
    _, _, first = build(run_config, cache_dir=cache)
    files = sorted(os.listdir(cache))
    assert len([f for f in files if f.startswith("consistent_knn_")]) == 2
    assert len([f for f in files if f.startswith("cooccurrence_")]) == 1
    _, _, second = build(run_config, cache_dir=cache)
    assert sorted(os.listdir(cache)) == files
    for name in first.item_graphs:
        assert torch.equal(first.item_graphs[name].to_dense(), second.item_graphs[name].to_dense())
    _, _, other_k = build(run_config, cache_dir=cache, damrs_behaviour_k=3)
    assert len(os.listdir(cache)) == len(files) + 1  # a new key for the behaviour graph only


def test_needs_both_modalities(run_config):
    with pytest.raises(ConfigError, match="DAMRS needs 'image' and 'text'.*cannot leave a modality out"):
        build(run_config, modalities=["text"])


@pytest.mark.parametrize("key, value", [("kl_weight", -1.0), ("neighbor_weight", "lots"),
                                        ("damrs_behaviour_k", 0), ("damrs_behaviour_min_count", 1.5)])
def test_bad_values_are_refused(run_config, key, value):
    with pytest.raises(ConfigError, match=key):
        build(run_config, **{key: value})


def test_pseudo_positives_in_anchor_chunks_equal_the_whole_batch():
    """The label distributions are computed a few anchors at a time (memory): every chunking
    gives the positives of the whole batch at once."""
    from recbole_mm.model.damrs import VIEWS, view_pseudo_positives

    generator = torch.Generator().manual_seed(0)
    tables = {name: torch.randn(60, 8, generator=generator) for name in VIEWS}
    anchors = {name: tables[name][torch.arange(0, 60, 3)] for name in VIEWS}
    whole = view_pseudo_positives(anchors, tables, 5)
    for budget in (60, 7 * 60):  # one anchor per chunk; 7 anchors per chunk (a ragged last chunk)
        chunked = view_pseudo_positives(anchors, tables, 5, budget_elements=budget)
        for name in VIEWS:
            assert torch.equal(chunked[name][0], whole[name][0]) and torch.equal(chunked[name][1], whole[name][1])
    labels = {name: label_distributions(anchors[name], tables[name]) for name in VIEWS}
    for name in VIEWS:  # each view's positives are pseudo_positives' (a view zeroed in place spoils none)
        others = [other for other in VIEWS if other != name]
        expected = pseudo_positives(labels[name], labels[others[0]], labels[others[1]], 5)
        assert torch.equal(whole[name][0], expected[0]) and torch.equal(whole[name][1], expected[1])
