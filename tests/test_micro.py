"""MICRO: per-modality item graphs, attention fusion, GRACE's contrastive alignment, accuracy.

The learned-graph refresh schedule MICRO shares with LATTICE is tested in test_lattice.py
(parametrised over both models)."""
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.data.graphs import learned_item_graph
from recbole_mm.model.loss import grace_info_nce
from recbole_mm.model.micro import MICRO
from tests.conftest import build_model, train_each, train_steps

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def build(run_config, model_class=MICRO, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), model_class)
    return config, loaders, model


def authors_contrastive_loss(z1, z2, tau):
    """The authors' ``batched_contrastive_loss`` in one batch: exp-sums over both views."""
    def sim(a, b):
        return F.normalize(a) @ F.normalize(b).T

    refl, between = torch.exp(sim(z1, z1) / tau), torch.exp(sim(z1, z2) / tau)
    return -torch.log(between.diag() / (refl.sum(1) + between.sum(1) - refl.diag())).mean()


@pytest.mark.parametrize("chunk_size", [4096, 7])
def test_grace_loss_equals_the_authors_formula_in_value_and_gradient(chunk_size):
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(30, 8, generator=generator, requires_grad=True)
    z2 = torch.randn(30, 8, generator=generator, requires_grad=True)
    ours = grace_info_nce(z1, z2, 0.5, chunk_size=chunk_size)
    reference = authors_contrastive_loss(z1, z2, 0.5)
    assert torch.allclose(ours, reference, atol=1e-5)
    for got, want in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(reference, [z1, z2])):
        assert torch.allclose(got, want, atol=1e-6)
    aligned = grace_info_nce(z2 + 0.01 * z1, z2, 0.5, chunk_size=chunk_size)
    assert aligned < reference, "aligned views give a smaller loss"


@pytest.mark.parametrize("chunk_size", [4096, 7])
def test_grace_loss_at_a_small_temperature_takes_the_shifted_path(chunk_size):
    """τ = 0.01: logits up to 100, past the unshifted bound; the max-shifted exps give the
    formula as log-sum-exps (the authors' exp-sums cancel to -inf here: their anchor's own
    e^100 swamps the rest in float64 too)."""
    generator = torch.Generator().manual_seed(1)
    z1 = torch.randn(20, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(20, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    ours = grace_info_nce(z1, z2, 0.01, chunk_size=chunk_size)
    a, p = F.normalize(z1), F.normalize(z2)
    own = (a @ a.T / 0.01).masked_fill(torch.eye(20, dtype=torch.bool), float("-inf"))
    between = a @ p.T / 0.01
    reference = (torch.logsumexp(torch.cat([own, between], dim=1), dim=1) - between.diag()).mean()
    assert torch.isfinite(ours) and torch.allclose(ours, reference, rtol=1e-9)
    for got, want in zip(torch.autograd.grad(ours, [z1, z2]), torch.autograd.grad(reference, [z1, z2])):
        assert torch.allclose(got, want, rtol=1e-7, atol=1e-9)


def test_each_modality_has_its_own_mixed_graph_and_items_fuse_by_attention(run_config):
    _, _, model = build(run_config)
    assert not hasattr(model, "modal_weight"), "no global modality weight in MICRO"
    model.eval()
    users, items = model.forward()
    graphs = [graph.to_dense() for graph in model.item_graphs]
    assert len(graphs) == 2
    with torch.no_grad():
        per_modality = []
        for graph, name in zip(graphs, ("image", "text")):
            learned = learned_item_graph([model.projections[name](model.raw_features[name])], 10).to_dense()
            original = model.item_knn_graph(10, {name: 1.0}, weighted=True).to_dense()
            assert torch.allclose(graph, 0.1 * learned + 0.9 * original, atol=1e-6)
            per_modality.append(graph @ model.item_id_embedding)
        scores = torch.cat([model.query(h) for h in per_modality], dim=1)
        attention = torch.softmax(scores, dim=1)
        fused = attention[:, :1] * per_modality[0] + attention[:, 1:] * per_modality[1]
        cf_users, cf_items = model.collaborative_embeddings()
    assert not torch.allclose(attention[1:, 0], attention[1:, 1]), "the weights depend on the item"
    assert torch.allclose(users, cf_users)
    assert torch.allclose(items, cf_items + F.normalize(fused, dim=1), atol=1e-5)


def authors_item_side(model, probe):
    """The authors' ``MICRO.forward`` item side (Models.py), densely, from ``model``'s
    parameters on the real items (rows 1..): per modality the top-k cosine graph of
    ``X_m W_m`` with its values, :math:`D^{-1/2} S D^{-1/2}` (row degree), mixed with the
    original graph, one propagation step, attention fusion; then ``loss_ratio`` times the two
    contrastive terms plus a fixed probe of the normalised fused part (the term BPR sees)."""
    per_modality = []
    for name in ("image", "text"):
        projected = model.projections[name](model.raw_features[name])[1:]
        unit = projected / projected.norm(dim=1, keepdim=True)
        top = torch.topk(unit @ unit.T, model.knn_k, dim=1)
        learned = torch.zeros(len(unit), len(unit)).scatter(1, top.indices, top.values)
        inv_sqrt = learned.sum(dim=1).pow(-0.5)
        learned = inv_sqrt[:, None] * learned * inv_sqrt[None, :]
        original = model.original_graphs[name].to_dense()[1:, 1:]
        graph = (1 - model.lambda_coeff) * learned + model.lambda_coeff * original
        per_modality.append(graph @ model.item_id_embedding[1:])
    attention = torch.softmax(torch.cat([model.query(h) for h in per_modality], dim=1), dim=1)
    fused = attention[:, :1] * per_modality[0] + attention[:, 1:] * per_modality[1]
    contrastive = sum(authors_contrastive_loss(h, fused, model.cl_temperature) for h in per_modality)
    return model.cl_weight * contrastive + (F.normalize(fused, dim=1) * probe).sum()


def test_item_side_matches_the_authors_forward_in_value_and_gradient(run_config):
    """Every trainable table the item side touches (ID embeddings, raw features, projections,
    query) gets the authors' gradient on a graph-refresh batch."""
    _, _, model = build(run_config)
    model.train()
    model.pre_epoch_processing()
    probe = torch.randn(model.n_items - 1, model.embedding_size, generator=torch.Generator().manual_seed(3))
    _, _, fused, per_modality = model.forward_parts()
    ours = model.auxiliary_loss(fused, per_modality) + (F.normalize(fused, dim=1)[1:] * probe).sum()
    reference = authors_item_side(model, probe)
    assert torch.allclose(ours, reference, rtol=1e-5)
    tables = [model.item_id_embedding, model.query[0].weight, model.query[2].weight]
    for name in ("image", "text"):
        tables += [model.raw_features[name], model.projections[name].weight, model.projections[name].bias]
    expected = torch.autograd.grad(reference, tables)
    assert all(g.abs().sum() > 0 for g in expected), "gradient reaches every table"
    for got, want in zip(torch.autograd.grad(ours, tables), expected):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_loss_adds_the_weighted_contrastive_terms_over_real_items(run_config):
    _, (train, _, _), model = build(run_config, cl_weight=0.5)
    batch = next(iter(train))
    model.train()
    loss = model.calculate_loss(batch)
    user_all, item_all, fused, per_modality = model.forward_parts()
    model.cl_weight = 0.0
    without = model.calculate_loss(batch)
    contrastive = sum(authors_contrastive_loss(h[1:], fused[1:], 0.5) for h in per_modality)
    assert torch.allclose(loss, without + 0.5 * contrastive, atol=1e-5)
    assert contrastive > 0


def test_contrastive_weight_switch_changes_only_the_loss(run_config):
    _, (train, _, _), model = build(run_config)
    _, _, plain = build(run_config, cl_weight=0.0)
    plain.load_state_dict(model.state_dict())
    batch = next(iter(train))
    model.train(), plain.train()
    assert plain.calculate_loss(batch) < model.calculate_loss(batch)
    model.eval(), plain.eval()
    assert all(torch.equal(a, b) for a, b in zip(model.forward(), plain.forward()))


def test_bad_temperature_is_a_clear_error(run_config):
    with pytest.raises(ValueError, match="cl_temperature"):
        build(run_config, cl_temperature=0.0)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, (train, _, _), model = build(run_config)
    # pre_epoch_processing before every step: every step learns the graph too
    losses = train_steps(model, next(iter(train)), 8, lr=0.01, before_step=model.pre_epoch_processing)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.slow
def test_micro_beats_popularity_on_the_bundled_dataset(tmp_path):
    runs = train_each(tmp_path, ["MICRO", "Pop"], "synthetic", epochs=10)
    micro, pop = (runs[m]["best_valid_result"]["recall@20"] for m in ("MICRO", "Pop"))
    assert micro > 2 * pop
