"""Shared layers and losses."""
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model import layers
from recbole_mm.model.layers import MLP, EdgeGraph, propagate, scatter_mean, scatter_sum
from recbole_mm.model.loss import info_nce


def test_propagate_matches_dense_powers():
    torch.manual_seed(0)
    dense = torch.rand(7, 7)
    dense = (dense + dense.T) / 4
    x = torch.randn(7, 3)
    adjacency = dense.to_sparse()
    powers = [x, dense @ x, dense @ dense @ x, dense @ dense @ dense @ x]
    assert torch.allclose(propagate(adjacency, x, 3, "mean"), sum(powers) / 4, atol=1e-6)
    assert torch.allclose(propagate(adjacency, x, 3, "sum"), sum(powers), atol=1e-6)
    assert torch.allclose(propagate(adjacency, x, 3, "last"), powers[-1], atol=1e-6)
    with pytest.raises(ValueError, match="combine"):
        propagate(adjacency, x, 1, "max")


def test_mlp_structure():
    mlp = MLP([10, 256, 64], activation="leakyrelu", last_bias=False)
    assert [type(m).__name__ for m in mlp] == ["Linear", "LeakyReLU", "Linear"]
    assert mlp[0].bias is not None and mlp[2].bias is None
    assert mlp(torch.randn(4, 10)).shape == (4, 64)


@pytest.mark.parametrize("native", [True, False])
def test_scatter_sum_and_mean(monkeypatch, native):
    if native:
        monkeypatch.setattr(layers, "torch_scatter", None)
    elif layers.torch_scatter is None:
        pytest.skip("torch-scatter (extra 'scatter') is not installed; the native path is tested above")
    src = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    index = torch.tensor([0, 2, 0])
    assert torch.equal(scatter_sum(src, index, 4), torch.tensor([[6.0, 8.0], [0, 0], [3.0, 4.0], [0, 0]]))
    assert torch.equal(scatter_mean(src, index, 4), torch.tensor([[3.0, 4.0], [0, 0], [3.0, 4.0], [0, 0]]))


def test_info_nce_matches_its_formula():
    torch.manual_seed(1)
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    cos = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.2
    expected = -(cos.diag() - torch.logsumexp(cos, dim=1)).mean()
    assert torch.allclose(info_nce(a, b, 0.2), expected, atol=1e-6)
    backward = -(cos.diag() - torch.logsumexp(cos, dim=0)).mean()
    assert torch.allclose(info_nce(a, b, 0.2, symmetric=True), (expected + backward) / 2, atol=1e-6)
    aligned = torch.eye(6)
    assert info_nce(aligned, aligned, 0.1) < info_nce(aligned, aligned.roll(1, 0), 0.1)



@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_gradient_equals_autograds_on_the_dense_formula(normalize, symmetric):
    """info_nce's hand-written backward against autograd through logsumexp, on large logits
    too (raw dot products / τ beyond 1000: exp overflows float64 without the row-maximum shift)."""
    generator = torch.Generator().manual_seed(3)
    a = (torch.randn(9, 4, generator=generator, dtype=torch.float64) * 12).requires_grad_()
    b = (torch.randn(9, 4, generator=generator, dtype=torch.float64) * 12).requires_grad_()

    def dense(a, b):
        x, y = (F.normalize(a, dim=1), F.normalize(b, dim=1)) if normalize else (a, b)
        logits = x @ y.T / 0.1
        loss = (torch.logsumexp(logits, dim=1) - logits.diag()).mean()
        if symmetric:
            loss = 0.5 * (loss + (torch.logsumexp(logits, dim=0) - logits.diag()).mean())
        return loss

    ours = info_nce(a, b, 0.1, symmetric=symmetric, normalize=normalize)
    expected = dense(a, b)
    assert torch.isfinite(ours) and torch.allclose(ours, expected, rtol=1e-10)
    for got, want in zip(torch.autograd.grad(ours, (a, b)), torch.autograd.grad(expected, (a, b))):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.1, symmetric, normalize), (a, b))

def random_edges(n_nodes, n_edges, seed):
    """n_edges distinct directed pairs s -> t (s != t) over n_nodes, in random order."""
    generator = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(n_nodes * n_nodes, generator=generator)
    pairs = pairs[pairs // n_nodes != pairs % n_nodes][:n_edges]
    return pairs // n_nodes, pairs % n_nodes


def test_edge_graph_products_match_gather_scatter_in_value_and_gradient():
    """EdgeGraph.aggregate / .dot against the gather-multiply-scatter they replace (GRCN's
    convolution), values and gradients with respect to the nodes and the edge weights."""
    torch.manual_seed(0)
    n_nodes, dim = 30, 5
    sources, targets = random_edges(n_nodes, 120, seed=1)
    graph = EdgeGraph(sources, targets, n_nodes)
    nodes = torch.randn(n_nodes, dim, requires_grad=True)
    weights = torch.randn(len(sources), requires_grad=True)
    upstream_nodes, upstream_edges = torch.randn(n_nodes, dim), torch.randn(len(sources))

    def gather_scatter():
        aggregated = scatter_sum(nodes[sources] * weights.unsqueeze(-1), targets, n_nodes)
        return aggregated, (nodes[targets] * nodes[sources]).sum(-1)

    results = []
    for run in (lambda: (graph.aggregate(nodes, weights), graph.dot(nodes)), gather_scatter):
        aggregated, dots = run()
        grads = torch.autograd.grad((aggregated * upstream_nodes).sum() + (dots * upstream_edges).sum(),
                                    (nodes, weights))
        results.append((aggregated, dots) + grads)
    for ours, expected in zip(*results):
        assert torch.allclose(ours, expected, atol=1e-5)
    dense = torch.zeros(n_nodes, n_nodes)
    dense[targets, sources] = weights.detach()
    assert torch.allclose(results[0][0], dense @ nodes.detach(), atol=1e-5), "h_t = sum_s w_st z_s"


@pytest.mark.parametrize("trainable", [True, False])
def test_register_table_is_a_parameter_or_a_saved_buffer(trainable):
    module = torch.nn.Module()
    table = torch.randn(3, 2)
    layers.register_table(module, "table", table, trainable)
    assert any(p is module.table for p in module.parameters()) is trainable
    assert "table" in module.state_dict() and torch.equal(module.state_dict()["table"], table)
    assert module.table.requires_grad is trainable


@pytest.mark.parametrize("shape", [(7, 7), (5, 9)])
def test_dropped_edges_equal_the_masked_matrix_in_products_and_gradients(shape):
    """DroppedEdges builds A[keep] and its transpose from presorted orders: the product and its
    backward (through the transpose) equal those of FrozenSparse on the masked COO matrix,
    for a square and a rectangular (non-symmetric) A."""
    from recbole_mm.model.layers import DroppedEdges, FrozenSparse

    generator = torch.Generator().manual_seed(5)
    dense = torch.rand(shape, generator=generator) * (torch.rand(shape, generator=generator) < 0.5)
    matrix = dense.to_sparse().coalesce()
    keep = torch.rand(matrix._nnz(), generator=generator) < 0.6
    expected = FrozenSparse(torch.sparse_coo_tensor(matrix.indices()[:, keep], matrix.values()[keep] * 2.5, shape))
    got = DroppedEdges(matrix).frozen(keep, 2.5)
    x = torch.randn(shape[1], 3, generator=generator, requires_grad=True)
    weights = torch.randn(shape[0], 3, generator=generator)
    (out_expected,), (out_got,) = [(frozen.mm(x),) for frozen in (expected, got)]
    assert torch.allclose(out_got, out_expected) and torch.allclose(got.to_dense(), expected.to_dense())
    grad_expected, = torch.autograd.grad((out_expected * weights).sum(), x)
    grad_got, = torch.autograd.grad((out_got * weights).sum(), x)
    assert torch.allclose(grad_got, grad_expected)
    assert torch.allclose(got.transposed.to_dense(), expected.to_dense().T)
