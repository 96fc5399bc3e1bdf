"""SMORE: the spectral filters against a dense DFT rewrite (value and gradient), the max-pooled
fusion graph, the views against a dense rewrite, the loss, and the refusals."""
import math

import pytest
import torch

from recbole_mm.data.graphs import elementwise_max
from recbole_mm.errors import ConfigError
from recbole_mm.model.smore import SMORE, spectral_filter
from tests.conftest import build_model, train_steps


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), SMORE)
    return config, loaders, model


def dense_spectral_filter(rows, weight):
    """x -> IDFT(DFT(x) * w) with the full complex DFT matrix (orthonormal), the filter
    extended to the negative frequencies by conjugate symmetry."""
    d = rows.shape[1]
    k = torch.arange(d, dtype=torch.float64)
    dft = torch.exp(-2j * math.pi * torch.outer(k, k) / d) / math.sqrt(d)
    full = torch.cat([weight, weight[1:d - d // 2].flip(0).conj()])
    return ((rows.to(torch.complex128) @ dft.T) * full) @ dft.conj().T


@pytest.mark.parametrize("d", [8, 9])
def test_spectral_filter_matches_a_dense_dft_in_value_and_gradient(d):
    generator = torch.Generator().manual_seed(d)
    rows = torch.randn(5, d, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(d // 2 + 1, dtype=torch.complex128, generator=generator)
    weight.imag[0] = 0.0  # the DC (and Nyquist) terms of a real signal's filter act through their real part
    if d % 2 == 0:
        weight.imag[-1] = 0.0
    probe = torch.randn(5, d, dtype=torch.float64, generator=generator)
    ours = spectral_filter(rows, weight)
    expected = dense_spectral_filter(rows, weight)
    assert expected.imag.abs().max() < 1e-10
    assert torch.allclose(ours, expected.real, atol=1e-10)
    g_ours, = torch.autograd.grad((ours * probe).sum(), rows)
    g_dense, = torch.autograd.grad((expected.real * probe).sum(), rows)
    assert torch.allclose(g_ours, g_dense, atol=1e-10)


def test_fusion_graph_is_the_entrywise_maximum_over_the_union():
    a = torch.sparse_coo_tensor(torch.tensor([[0, 0, 1], [0, 2, 1]]), torch.tensor([0.5, 0.2, 0.9]), (3, 3))
    b = torch.sparse_coo_tensor(torch.tensor([[0, 1, 2], [0, 1, 0]]), torch.tensor([0.7, 0.1, -0.3]), (3, 3))
    pooled = elementwise_max([a, b]).to_dense()
    expected = torch.tensor([[0.7, 0.0, 0.2], [0.0, 0.9, 0.0], [-0.3, 0.0, 0.0]])
    assert torch.equal(pooled, expected)


def test_views_match_a_dense_rewrite(run_config):
    _, _, model = build(run_config, dropout_rate=0.0)
    model.eval()
    a = model.adjacency.to_dense()
    ego = torch.cat([model.user_embedding, model.item_id_embedding])
    layers = [ego]
    for _ in range(model.n_ui_layers):
        layers.append(a @ layers[-1])
    content = torch.stack(layers).mean(0)
    block = model.user_item_block.to_dense()
    filtered = model.spectral_views()
    modal = {}
    for view in ("image", "text", "fusion"):
        items = model.item_graphs[view].to_dense() @ (model.item_id_embedding * model.view_gates[view](filtered[view]))
        modal[view] = torch.cat([block @ items, items])
    parts = [torch.softmax(model.queries[n](modal["fusion"]), -1) * modal[n] for n in ("image", "text")] + [modal["fusion"]]
    side = sum(model.preference_gates[v](content) * p for v, p in zip(("image", "text", "fusion"), parts)) / 3
    final, got_side, got_content = model.views()
    assert torch.allclose(got_content, content, atol=1e-5)
    assert torch.allclose(got_side, side, atol=1e-5)
    assert torch.allclose(final, content + side, atol=1e-5)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config)
    losses = train_steps(model, next(iter(loaders[0])), 12, lr=0.03)
    assert losses[-1] < 0.8 * losses[0]


def test_needs_both_modalities(run_config):
    with pytest.raises(ConfigError, match="SMORE"):
        build(run_config, modalities=["text"])
