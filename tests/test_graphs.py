"""Graph builders: normalised adjacency, chunked kNN graphs with their cache, edge pruning."""
import os

import numpy as np
import scipy.sparse as sp
import torch

from recbole_mm.data.graphs import (
    DegreeSensitiveEdgeSampler,
    item_knn_graph,
    knn_graph,
    normalized_adjacency,
)


def random_interactions(n_users=30, n_items=20, density=0.2, seed=0):
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[:, 0] = 0  # padding item
    dense[np.arange(n_users), 1 + np.arange(n_users) % (n_items - 1)] = 1  # every user has an edge
    return sp.coo_matrix(dense), dense


def test_normalized_adjacency_is_symmetric_d_half_a_d_half():
    matrix, dense = random_interactions()
    n_users, n_items = dense.shape
    graph = normalized_adjacency(matrix, n_users, n_items).to_dense().numpy()
    full = np.zeros((n_users + n_items,) * 2, dtype=np.float32)
    full[:n_users, n_users:] = dense
    full[n_users:, :n_users] = dense.T
    degree = full.sum(1) + 1e-7
    expected = full / np.sqrt(degree)[:, None] / np.sqrt(degree)[None, :]
    np.testing.assert_allclose(graph, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(graph, graph.T)
    assert np.all(graph[:n_users, :n_users] == 0) and np.all(graph[n_users:, n_users:] == 0)


def test_duplicate_interactions_count_once():
    matrix, dense = random_interactions()
    doubled = sp.coo_matrix((np.concatenate([matrix.data, matrix.data]),
                             (np.concatenate([matrix.row, matrix.row]), np.concatenate([matrix.col, matrix.col]))),
                            shape=matrix.shape)
    a = normalized_adjacency(matrix, *dense.shape).to_dense()
    b = normalized_adjacency(doubled, *dense.shape).to_dense()
    assert torch.allclose(a, b)


def brute_force_knn(features, k):
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = normed @ normed.T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_knn_graph_has_k_neighbours_per_row_with_self_and_value_one_over_k():
    rng = np.random.default_rng(1)
    features = torch.from_numpy(rng.standard_normal((50, 8)).astype(np.float32))
    k = 5
    graph = knn_graph(features, k).to_dense().numpy()
    assert np.all((graph > 0).sum(axis=1) == k)
    assert np.all(np.diag(graph) > 0), "each item is its own nearest neighbour"
    np.testing.assert_allclose(graph[graph > 0], 1.0 / k, rtol=1e-6)
    expected = brute_force_knn(features.numpy(), k)
    for row in range(50):
        assert set(np.nonzero(graph[row])[0]) == set(expected[row])


def test_knn_in_small_chunks_equals_one_chunk():
    rng = np.random.default_rng(2)
    features = torch.from_numpy(rng.standard_normal((97, 16)).astype(np.float32))
    whole = knn_graph(features, 7, budget_elements=10 ** 9).to_dense()
    chunked = knn_graph(features, 7, budget_elements=97 * 3).to_dense()  # 3 rows per chunk
    assert torch.equal(whole, chunked)


def test_weighted_knn_keeps_cosine_and_normalises_by_row_degree():
    rng = np.random.default_rng(3)
    features = torch.from_numpy(np.abs(rng.standard_normal((30, 4))).astype(np.float32))
    graph = knn_graph(features, 4, weighted=True).to_dense().numpy()
    normed = features.numpy() / np.linalg.norm(features.numpy(), axis=1, keepdims=True)
    cosine = normed @ normed.T
    mask = np.zeros_like(cosine)
    np.put_along_axis(mask, brute_force_knn(features.numpy(), 4), 1.0, axis=1)
    raw = cosine * mask
    degree = raw.sum(1)
    np.testing.assert_allclose(graph, raw / np.sqrt(degree)[:, None] / np.sqrt(degree)[None, :], rtol=1e-5, atol=1e-7)


def modality_features(n_items=40, seed=4):
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.standard_normal((n_items, 12)).astype(np.float32))
    text = torch.from_numpy(rng.standard_normal((n_items, 6)).astype(np.float32))
    image[0] = 0
    text[0] = 0
    return {"image": image, "text": text}


def test_item_graph_mixes_modalities_and_skips_padding():
    features = modality_features()
    mixed = item_knn_graph(features, {"image": 0.1, "text": 0.9}, k=5).to_dense()
    image = knn_graph(features["image"][1:], 5).to_dense()
    text = knn_graph(features["text"][1:], 5).to_dense()
    assert torch.allclose(mixed[1:, 1:], 0.1 * image + 0.9 * text, atol=1e-7)
    assert mixed[0].abs().sum() == 0 and mixed[:, 0].abs().sum() == 0
    assert torch.allclose(mixed.sum(dim=1)[1:], torch.ones(39), atol=1e-5), "rows stay stochastic"


def test_item_graph_cache_key_covers_every_parameter(tmp_path):
    features = modality_features()
    cache = str(tmp_path / "cache")
    first = item_knn_graph(features, {"image": 0.1, "text": 0.9}, k=5, cache_dir=cache)
    assert len(os.listdir(cache)) == 1
    again = item_knn_graph(features, {"image": 0.1, "text": 0.9}, k=5, cache_dir=cache)
    assert torch.equal(first.to_dense(), again.to_dense()) and len(os.listdir(cache)) == 1
    item_knn_graph(features, {"image": 0.2, "text": 0.8}, k=5, cache_dir=cache)
    item_knn_graph(features, {"image": 0.1, "text": 0.9}, k=6, cache_dir=cache)
    item_knn_graph(features, {"image": 0.1, "text": 0.9}, k=5, weighted=True, cache_dir=cache)
    changed = dict(features, text=features["text"] * 2 + 1)
    rebuilt = item_knn_graph(changed, {"image": 0.1, "text": 0.9}, k=5, cache_dir=cache)
    assert len(os.listdir(cache)) == 5, "weight, k, weighting and feature content each get their own entry"
    assert torch.equal(rebuilt.to_dense(), item_knn_graph(changed, {"image": 0.1, "text": 0.9}, k=5).to_dense())


def test_edge_sampler_keeps_a_degree_sensitive_subset():
    matrix, dense = random_interactions(n_users=60, n_items=40, density=0.15, seed=5)
    n_users, n_items = dense.shape
    sampler = DegreeSensitiveEdgeSampler(matrix, n_users, n_items, dropout=0.5)
    n_edges = int(dense.sum())
    counts = torch.zeros(n_edges)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        kept = sampler.sample_edges(generator)
        assert len(kept) == int(n_edges * 0.5) and len(torch.unique(kept)) == len(kept)
        counts[kept] += 1
    frequency = counts / 400
    weight = sampler.edge_weight
    low, high = weight < weight.median(), weight > weight.median()
    assert frequency[high].mean() > frequency[low].mean() + 0.1, "edges between low-degree nodes survive more"
    corr = np.corrcoef(weight.numpy(), frequency.numpy())[0, 1]
    assert corr > 0.5


def test_edge_sampler_renormalises_the_kept_subgraph():
    matrix, dense = random_interactions(seed=6)
    n_users, n_items = dense.shape
    sampler = DegreeSensitiveEdgeSampler(matrix, n_users, n_items, dropout=0.3)
    kept = sampler.sample_edges(torch.Generator().manual_seed(1))
    sub = sp.coo_matrix((np.ones(len(kept)), (sampler.users[kept].numpy(), sampler.items[kept].numpy())),
                        shape=dense.shape)
    expected = normalized_adjacency(sub, n_users, n_items).to_dense()
    graph = sampler.sample(torch.Generator().manual_seed(1)).to_dense()
    assert torch.allclose(graph, expected)
    assert set(zip(sub.row, sub.col)) <= set(zip(*np.nonzero(dense)))
    full = DegreeSensitiveEdgeSampler(matrix, n_users, n_items, dropout=0.0).sample().to_dense()
    assert torch.allclose(full, normalized_adjacency(matrix, n_users, n_items).to_dense())


def test_user_cooccurrence_neighbours_match_brute_force_counts():
    from recbole_mm.data.graphs import user_cooccurrence_neighbours

    matrix, dense = random_interactions(n_users=40, n_items=25, density=0.15, seed=3)
    counts = dense @ dense.T
    np.fill_diagonal(counts, 0)
    neighbours, top = user_cooccurrence_neighbours(matrix, top_k=5, budget_elements=40 * 7)  # chunks of 7 users
    for user in range(40):
        expected = np.sort(counts[user])[::-1][:5]
        np.testing.assert_allclose(top[user].numpy(), expected)
        positive = top[user] > 0
        assert np.all(counts[user, neighbours[user][positive].numpy()] == top[user][positive].numpy())
        assert user not in neighbours[user][positive].tolist()


def test_user_graph_rows_sum_to_one_and_resample_each_epoch():
    from recbole_mm.data.graphs import UserGraphSampler

    matrix, dense = random_interactions(n_users=60, n_items=30, density=0.1, seed=4)
    dense[59] = 0  # a user who shares nothing with anybody
    dense[59, 0] = 0
    matrix = sp.coo_matrix(dense)
    counts = dense @ dense.T
    np.fill_diagonal(counts, 0)
    sampler = UserGraphSampler(matrix, k=4, stored=20)
    generator = torch.Generator().manual_seed(0)
    first = sampler.sample(generator).to_dense().numpy()
    has_neighbours = counts.sum(1) > 0
    np.testing.assert_allclose(first.sum(1)[has_neighbours], 1.0, rtol=1e-5)
    assert np.all(first[~has_neighbours] == 0)
    assert np.all((first > 0).sum(1) == np.minimum(4, (counts > 0).sum(1)))
    assert np.all(counts[first > 0] > 0), "only co-interacting users are neighbours"
    draws = [sampler.sample(generator).to_dense().numpy() > 0 for _ in range(5)]
    assert any(not np.array_equal(draws[0], other) for other in draws[1:]), "a new draw each epoch"


def test_user_graph_top_k_pads_short_lists_as_a_polya_urn():
    """``top_k``: each user's first k neighbours, softmax of their counts; with ``pad`` (MMRec's
    ``topk_sample``) a short list is filled to k by copying an entry drawn uniformly from the list
    as it grows, and the softmax runs over the k entries."""
    from recbole_mm.data.graphs import UserGraphSampler

    # user 0 shares item 1 with user 1 and items 2, 3 with user 2; users 3..5 share items 4, 5 (two
    # neighbours each, tied counts)
    dense = np.zeros((6, 6), dtype=np.float32)
    dense[0, [1, 2, 3]] = dense[1, 1] = 1
    dense[2, [2, 3]] = 1
    dense[3:6, 4] = dense[3:6, 5] = 1
    sampler = UserGraphSampler(sp.coo_matrix(dense), k=4, stored=4)
    plain = sampler.top_k().to_dense()
    assert torch.allclose(plain[0, [2, 1]], torch.softmax(torch.tensor([2.0, 1.0]), 0))
    assert plain[0].count_nonzero() == 2 and plain[1].tolist() == [1, 0, 0, 0, 0, 0]
    generator = torch.Generator().manual_seed(0)
    share = []
    for _ in range(1500):
        padded = sampler.top_k(pad=True, generator=generator).to_dense()
        assert torch.equal(padded[1:3], plain[1:3]), "one neighbour: its copies keep weight 1"
        assert set((padded[3:] * 4).round().flatten().tolist()) <= {0.0, 1.0, 2.0, 3.0}, "tied counts: m / 4"
        ratio = padded[0, 2] / padded[0, 1] / np.e  # m_2 / m_1, with m_1 + m_2 = 4
        share.append(int(round(4 * ratio.item() / (1 + ratio.item()))))
    counts = np.bincount(share, minlength=4)[1:]
    # Polya urn from (1, 1), two draws: m_2 = 1, 2, 3 each with probability 1/3
    # (copies of the original entries only would give 1/4, 1/2, 1/4)
    np.testing.assert_allclose(counts / 1500, [1 / 3] * 3, atol=0.05)
