"""Shared layers and losses."""
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model import layers
from recbole_mm.model.layers import MLP, propagate, scatter_mean, scatter_sum
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
