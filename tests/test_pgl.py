"""PGL: the principal subgraph (global: against a dense SVD; local: degree-sensitive 30%), the
forward pass against a dense rewrite, the InfoNCE term, and the refusals."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_mm.data.graphs import principal_subgraph
from recbole_mm.errors import ConfigError
from recbole_mm.model.pgl import PGL
from tests.conftest import build_model, train_steps


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), PGL)
    return config, loaders, model


def dense_principal_subgraph(adjacency, rank, share=0.25, threshold=1e-3):
    """MMRec's global_subgraph_extraction with numpy's full SVD in place of sparsesvd."""
    left, values, right = np.linalg.svd(adjacency)
    m = int(share * rank)
    product = left[:, :m] @ np.diag(values[:m] * values[rank - m:rank]) @ right[:m]
    return product * (np.abs(product) >= threshold)


def bipartite_normalised(n_users, n_items, density, seed):
    rng = np.random.default_rng(seed)
    r = (rng.random((n_users, n_items)) < density).astype(float)
    a = np.block([[np.zeros((n_users, n_users)), r], [r.T, np.zeros((n_items, n_items))]])
    d = a.sum(1) + 1e-7
    return a / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]


def test_global_principal_subgraph_matches_a_dense_svd():
    adjacency = bipartite_normalised(25, 30, 0.2, seed=0)
    ours = principal_subgraph(sp.csr_matrix(adjacency), rank=16).to_dense().double().numpy()
    expected = dense_principal_subgraph(adjacency, rank=16)
    assert np.abs(expected).max() > 1e-2 and (expected != 0).sum() > 100
    assert np.allclose(ours, expected, atol=2e-6)
    chunked = principal_subgraph(sp.csr_matrix(adjacency), rank=16, budget_elements=55 * 3).to_dense().double().numpy()
    assert np.allclose(chunked, ours, atol=1e-7), "row chunks change nothing"


def test_forward_is_content_items_through_lightgcn_plus_the_item_graph(run_config):
    _, _, model = build(run_config)
    model.eval()
    items = torch.cat([torch.nn.functional.normalize(model.projections[n](model.features[n]), dim=1)
                       for n in ("image", "text")], 1)
    ego = torch.cat([torch.cat([model.user_image, model.user_text], 1), items])
    a = model.full_adjacency.to_dense()
    nodes = (ego + a @ ego + a @ (a @ ego)) / 3
    users, item_nodes = torch.split(nodes, [model.n_users, model.n_items])
    expected_items = item_nodes + model.item_graph.to_dense() @ items
    got_users, got_items = model.forward()
    assert torch.allclose(got_users, users, atol=1e-5) and torch.allclose(got_items, expected_items, atol=1e-5)


def test_local_mode_trains_on_a_fresh_30_percent_degree_sensitive_subgraph(run_config):
    _, _, model = build(run_config)
    model.train()
    model.pre_epoch_processing()
    first = model.train_adjacency.matrix.to_sparse_coo().indices()
    assert model.train_adjacency._nnz() == 2 * int(len(model.edge_sampler.users) * 0.3)
    model.pre_epoch_processing()
    assert not torch.equal(first, model.train_adjacency.matrix.to_sparse_coo().indices())


def test_global_mode_trains_on_the_fixed_low_rank_subgraph(run_config):
    _, _, model = build(run_config, mode="global")
    model.train()
    before = model.train_adjacency
    model.pre_epoch_processing()
    assert model.train_adjacency is before and model.edge_sampler is None
    full = model.full_adjacency.to_dense().double().numpy()
    expected = dense_principal_subgraph(full, rank=model.embedding_size)
    assert np.allclose(before.to_dense().double().numpy(), expected, atol=1e-5)


def test_info_nce_term_is_added_with_reg_weight(run_config):
    _, loaders, model = build(run_config)
    batch = next(iter(loaders[0]))
    model.train()
    torch.manual_seed(0)
    plain = model.calculate_loss(batch)
    model.reg_weight = 0.5
    torch.manual_seed(0)
    with_cl = model.calculate_loss(batch)
    assert with_cl > plain + 0.5, "two InfoNCE terms of ~log B each, halved, weighted"


def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config, reg_weight=0.1)
    losses = train_steps(model, next(iter(loaders[0])), 30, lr=0.01, before_step=model.pre_epoch_processing)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("bad, message", [({"modalities": ["text"]}, "PGL"), ({"feat_embed_dim": 32}, "feat_embed_dim"),
                                          ({"mode": "regional"}, "mode")])
def test_refusals(run_config, bad, message):
    with pytest.raises(ConfigError, match=message):
        build(run_config, **bad)
