"""LATTICE: the differentiable chunked kNN graph builder, the random-walk adjacency, the
learned-graph refresh schedule, the switches, the loss and accuracy."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from recbole_mm.data.graphs import (
    interaction_edges,
    knn_graph,
    learned_item_graph,
    normalized_adjacency,
    random_walk_adjacency,
)
from recbole_mm.model.lattice import LATTICE
from recbole_mm.model.layers import propagate, sparse_dense_mm
from recbole_mm.model.micro import MICRO
from tests.conftest import REPO_ROOT, build_model, train_each, train_steps

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ---------------------------------------------------------------------- graph builders
def dense_learned_graph(embeddings, k, weights):
    """MMRec's dense computation: build_sim -> build_knn_neighbourhood per modality, mix, then
    compute_normalized_laplacian (rows 1.. only: the padding item has no edges)."""
    mixed = 0
    for weight, matrix in zip(weights, embeddings):
        unit = matrix[1:] / matrix[1:].norm(dim=1, keepdim=True)
        sims = unit @ unit.T
        top = torch.topk(sims, k, dim=1)
        mixed = mixed + weight * torch.zeros_like(sims).scatter(1, top.indices, top.values)
    inv_sqrt = mixed.sum(dim=1).pow(-0.5)
    return inv_sqrt[:, None] * mixed * inv_sqrt[None, :]


def test_learned_graph_equals_the_dense_computation_in_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(41, 12, generator=generator).requires_grad_()
    text = torch.randn(41, 6, generator=generator).requires_grad_()
    omega = torch.tensor([0.3, 0.8], requires_grad=True)
    signal = torch.randn(41, 5, generator=generator)

    def loss_and_grads(build_graph):
        graph = build_graph(torch.softmax(omega, dim=0))
        loss = (graph @ signal[1:]).square().sum()
        return [g.clone() for g in torch.autograd.grad(loss, [image, text, omega])]

    def ours(weights):
        sparse = learned_item_graph([image, text], 4, weights, budget_elements=40 * 3)  # 3 rows per chunk
        full = sparse.to_dense()
        assert full[0].abs().sum() == 0 and full[:, 0].abs().sum() == 0, "padding item left out"
        return full[1:, 1:]

    def reference(weights):
        return dense_learned_graph([image, text], 4, weights)

    with torch.no_grad():
        assert torch.allclose(ours(torch.softmax(omega, 0)), reference(torch.softmax(omega, 0)), atol=1e-6)
    expected = loss_and_grads(reference)
    assert all(g.abs().sum() > 0 for g in expected), "gradient reaches every input"
    for got, want in zip(loss_and_grads(ours), expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_one_modality_learned_graph_is_the_weighted_knn_graph():
    features = torch.randn(30, 8, generator=torch.Generator().manual_seed(1)).abs()
    learned = learned_item_graph([features], 5).to_dense()
    assert torch.allclose(learned[1:, 1:], knn_graph(features[1:], 5, weighted=True).to_dense(), atol=1e-6)
    with pytest.raises(ValueError, match="2 modalities need mixing weights"):
        learned_item_graph([features, features], 5)


class LargestAllocation(TorchDispatchMode):
    """Records the largest dense tensor storage (in elements) produced by any aten op, forward
    and backward, inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided:
                elements = tensor.untyped_storage().nbytes() // tensor.element_size()
                self.largest = max(self.largest, elements)
        return out


def test_learned_graph_never_allocates_an_items_by_items_tensor():
    n_items, chunk_rows = 2000, 16  # n > 2 k d: the (edges x d) gathers stay below n x n
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(n_items, 64, generator=generator).requires_grad_()
    text = torch.randn(n_items, 32, generator=generator).requires_grad_()
    omega = torch.zeros(2, requires_grad=True)
    with LargestAllocation() as guard:
        graph = learned_item_graph([image, text], 10, torch.softmax(omega, 0), budget_elements=n_items * chunk_rows)
        sparse_dense_mm(graph, torch.randn(n_items, 64, generator=generator)).square().sum().backward()
    assert image.grad is not None and omega.grad is not None
    # the largest tensors: one kNN chunk, and (edges x d) gathers for the edges' gradients
    edges_by_width = 2 * n_items * 10 * 64
    assert guard.largest <= max(n_items * chunk_rows, edges_by_width) < n_items ** 2, guard.largest


def test_sparse_dense_mm_matches_dense_gradients():
    generator = torch.Generator().manual_seed(3)
    indices = torch.stack([torch.arange(30).repeat_interleave(4), torch.randint(0, 20, (120,), generator=generator)])
    graph = torch.sparse_coo_tensor(indices, torch.rand(120, generator=generator), (30, 20)).coalesce()
    values = graph.values().clone().requires_grad_()
    dense_x = torch.randn(20, 8, generator=generator, requires_grad=True)
    signal = torch.randn(30, 8, generator=generator)
    ours = sparse_dense_mm(torch.sparse_coo_tensor(graph.indices(), values, graph.shape).coalesce(), dense_x,
                           chunk_elements=8 * 7)  # 7 edges per chunk
    grads = torch.autograd.grad((ours * signal).sum(), [values, dense_x])
    matrix = torch.zeros(30, 20).index_put(tuple(graph.indices()), values)
    expected = torch.autograd.grad(((matrix @ dense_x) * signal).sum(), [values, dense_x])
    assert torch.allclose(ours, matrix @ dense_x, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, expected))


def test_lattice_training_step_never_allocates_an_items_by_items_tensor(run_config):
    """A first batch (graph learned with gradient) on a catalogue of ~2,400 items."""
    generator = {"seed": 7, "n_users": 400, "n_items": 3000, "mean_interactions": 20}
    _, (train, _, _), model = build(run_config, synthetic_generator=generator)
    model.knn_chunk_elements = model.n_items * 16
    model.train()
    model.pre_epoch_processing()
    with LargestAllocation() as guard:
        model.calculate_loss(next(iter(train))).backward()
    assert model.projections["image"].weight.grad is not None
    # the largest: (edges x d) gathers, in chunks of 2^22 elements (sparse_dense_mm)
    assert guard.largest <= 2 ** 22 < model.n_items ** 2, (guard.largest, model.n_items)


@pytest.mark.slow
def test_learned_graph_of_a_large_catalogue_stays_small_in_memory():
    """46,341 items: an items x items float32 matrix would take 8 GB; building the graph and
    back-propagating through it peaks far below that (one 256 MB chunk at a time)."""
    script = textwrap.dedent("""
        import resource, torch
        from recbole_mm.data.graphs import learned_item_graph
        from recbole_mm.model.layers import sparse_dense_mm
        n = 46341
        embeddings = torch.randn(n, 64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        graph = learned_item_graph([embeddings], 10)
        sparse_dense_mm(graph, torch.ones(n, 4)).sum().backward()
        assert graph._nnz() >= (n - 1) * 10 - n and embeddings.grad is not None
        print(before // 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=300)
    assert done.returncode == 0, done.stderr
    before_mb, peak_mb = map(int, done.stdout.split())
    assert peak_mb - before_mb < 1024, f"peak {peak_mb} MB, {before_mb} MB before building"


def test_random_walk_adjacency_averages_each_node_with_its_neighbours():
    rng = np.random.default_rng(0)
    dense = (rng.random((7, 5)) < 0.4).astype(np.float32)
    users, items = interaction_edges(sp.coo_matrix(dense))
    graph = random_walk_adjacency(users, items, 7, 5).to_dense().numpy()
    full = np.zeros((12, 12), dtype=np.float32)
    full[:7, 7:], full[7:, :7] = dense, dense.T
    full += np.eye(12, dtype=np.float32)
    np.testing.assert_allclose(graph, full / full.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(graph.sum(axis=1), np.ones(12), rtol=1e-6)
    no_loops = random_walk_adjacency(users, items, 7, 5, self_loops=False).to_dense().numpy()
    assert np.all(np.diag(no_loops) == 0)


# ---------------------------------------------------------------------- the model
def build(run_config, model_class=LATTICE, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), model_class)
    return config, loaders, model


def dense(graph):
    return graph.detach().to_dense()


def test_forward_is_lightgcn_on_the_random_walk_graph_plus_normalised_item_graph_part(run_config):
    _, _, model = build(run_config)
    model.eval()
    users, items = model.forward()
    with torch.no_grad():
        weights = torch.softmax(model.modal_weight, 0)
        projected = [model.projections[m](model.raw_features[m]) for m in ("image", "text")]
        learned = dense(learned_item_graph(projected, 10, weights))
        original = sum(w * dense(model.item_knn_graph(10, {m: 1.0}, weighted=True))
                       for w, m in zip(weights, ("image", "text")))
        graph = 0.1 * learned + 0.9 * original
        h = graph @ model.item_id_embedding
        adjacency = random_walk_adjacency(*interaction_edges(model.interaction_matrix), model.n_users, model.n_items)
        nodes = propagate(adjacency, torch.cat([model.user_embedding, model.item_id_embedding]), 2, "mean")
    assert torch.allclose(dense(model.item_graphs[0]), graph, atol=1e-6)
    assert torch.allclose(users, nodes[:model.n_users], atol=1e-6)
    assert torch.allclose(items, nodes[model.n_users:] + F.normalize(h, dim=1), atol=1e-5)


def test_adjacency_switch_changes_only_the_user_item_graph(run_config):
    _, _, walk = build(run_config)
    _, _, symmetric = build(run_config, adjacency_norm="symmetric")
    symmetric.load_state_dict(walk.state_dict())
    expected = normalized_adjacency(walk.interaction_matrix, walk.n_users, walk.n_items)
    assert torch.equal(dense(symmetric.adjacency), dense(expected))
    assert not torch.allclose(dense(walk.adjacency), dense(expected))
    walk.eval(), symmetric.eval()
    (walk_users, walk_items), (sym_users, sym_items) = walk.forward(), symmetric.forward()
    assert torch.allclose(dense(walk.item_graphs[0]), dense(symmetric.item_graphs[0]))
    assert not torch.allclose(walk_users, sym_users)
    _, _, mf = build(run_config, cf_model="mf")
    mf.load_state_dict(walk.state_dict())
    mf.eval()
    users, items = mf.forward()
    assert torch.equal(users, mf.user_embedding)
    assert torch.allclose(items - mf.item_id_embedding, walk_items - walk.collaborative_embeddings()[1], atol=1e-6)


@pytest.mark.parametrize("key, value", [("cf_model", "ngcf"), ("adjacency_norm", "left"), ("lambda_coeff", 1.5)])
def test_bad_config_names_the_key(run_config, key, value):
    with pytest.raises(ValueError, match=key):
        build(run_config, **{key: value})


def test_frozen_features_switch(run_config):
    _, _, model = build(run_config, trainable_features=False)
    assert not any(p.requires_grad for p in model.raw_features.values())
    _, (train, _, _), trainable = build(run_config)
    assert all(p.requires_grad for p in trainable.raw_features.values())
    image = train._dataset.modality_features["image"]
    assert trainable.raw_features["image"].data_ptr() != image.data_ptr(), "the dataset keeps its features"
    before = image.clone()
    with torch.no_grad():
        trainable.raw_features["image"].add_(1.0)
    assert torch.equal(image, before)


class CountingBuilds:
    """Wraps ``model.build_item_graphs``: records whether gradient was on at each build."""

    def __init__(self, model):
        self.calls = []
        original = model.build_item_graphs

        def build_item_graphs():
            self.calls.append(torch.is_grad_enabled())
            return original()

        model.build_item_graphs = build_item_graphs


def learned_parameters(model):
    return [p for name, p in model.named_parameters() if name.startswith(("projections", "raw_features", "modal"))]


@pytest.mark.parametrize("model_class", [LATTICE, MICRO])
def test_item_graphs_rebuild_with_gradient_on_an_epochs_first_batch_only_and_for_evaluation(run_config, model_class):
    _, (train, valid, _), model = build(run_config, model_class, train_batch_size=512)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    builds = CountingBuilds(model)
    batches = iter(train)
    model.train()
    model.pre_epoch_processing()

    def step():
        optimizer.zero_grad()
        model.calculate_loss(next(batches)).backward()
        optimizer.step()

    step()
    assert builds.calls == [True]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned_parameters(model))
    first_graphs = [dense(g) for g in model.item_graphs]
    step()
    assert builds.calls == [True], "later batches reuse the epoch's graph"
    assert all(p.grad is None for p in learned_parameters(model)), "detached: no gradient to the graph learner"
    assert all(torch.equal(dense(g), f) for g, f in zip(model.item_graphs, first_graphs))

    model.eval()
    model.full_sort_predict(next(iter(valid))[0])
    assert builds.calls == [True, False], "evaluation rebuilds from the current parameters, without gradient"
    assert not all(torch.allclose(dense(g), f) for g, f in zip(model.item_graphs, first_graphs))

    model.train()
    model.pre_epoch_processing()
    step()
    assert builds.calls == [True, False, True]


def test_loss_is_bpr_plus_half_squared_norms_over_the_configured_batch_size(run_config):
    config, (train, _, _), model = build(run_config, reg_weight=0.1)
    batch = next(iter(train))
    model.train()
    loss = model.calculate_loss(batch)
    users, items = model.forward()
    u, i, j = users[batch[model.USER_ID]], items[batch[model.ITEM_ID]], items[batch[model.NEG_ITEM_ID]]
    bpr = -torch.log(1e-10 + torch.sigmoid((u * i).sum(1) - (u * j).sum(1))).mean()
    l2 = 0.5 * (u.square().sum() + i.square().sum() + j.square().sum()) / config["train_batch_size"]
    assert torch.allclose(loss, bpr + 0.1 * l2, atol=1e-6)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, (train, _, _), model = build(run_config)
    # pre_epoch_processing before every step: every step learns the graph too
    losses = train_steps(model, next(iter(train)), 8, lr=0.01, before_step=model.pre_epoch_processing)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.slow
def test_lattice_beats_popularity_on_the_bundled_dataset(tmp_path):
    runs = train_each(tmp_path, ["LATTICE", "Pop"], "synthetic", epochs=15)
    lattice, pop = (runs[m]["best_valid_result"]["recall@20"] for m in ("LATTICE", "Pop"))
    assert lattice > 2 * pop
