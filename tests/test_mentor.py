"""MENTOR: the perturbed views, the alignment and masking terms against dense rewrites of the
reference formulas, the quirk switches, evaluation, and a run under GUIDER."""
import itertools
import os

import pytest
import torch
import torch.nn.functional as F

from recbole.data.interaction import Interaction

from recbole_mm.model.mentor import MENTOR
from recbole_mm.trainer import GUIDERTrainer
from tests.conftest import REPO_ROOT, build_model, train_each, train_steps


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), MENTOR)
    return config, loaders, model


def first_batch(loaders):
    return next(iter(loaders[0]))


def dense(matrix):
    return matrix.to_dense()


class NoiseQueue:
    """A fixed sequence of U[0, 1) draws, handed out in call order (the model's draw_noise)."""

    def __init__(self, seed=0):
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = []

    def __call__(self, like):
        noise = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        self.drawn.append(noise)
        return noise


def dense_branch(branch, adjacency, features, noises=None, eps=0.1):
    """Reference GCN.forward, densely: x = rownorm([P; MLP(f)]); h = A x (+ noise); h1 = A h
    (+ noise); x + h + h1."""
    x = F.normalize(torch.cat([branch.preference, branch.mlp(features)]), dim=1)
    h = adjacency @ x
    if noises is not None:
        h = h + torch.sign(h) * noises[0] / noises[0].norm(dim=1, keepdim=True) * eps
    h1 = adjacency @ h
    if noises is not None:
        h1 = h1 + torch.sign(h1) * noises[1] / noises[1].norm(dim=1, keepdim=True) * eps
    return x + h + h1


def dense_fused(model, v, t, graph):
    """users [w0 v_u ‖ w1 t_u]; items [v_i ‖ t_i] + G [v_i ‖ t_i] from (U + I) x d node tables."""
    n_users = model.n_users
    w = model.user_modality_weight
    users = torch.cat([w[:, :1] * v[:n_users], w[:, 1:] * t[:n_users]], dim=1)
    items = torch.cat([v[n_users:], t[n_users:]], dim=1)
    return users, items + graph @ items


def dense_info_nce(a, b, temperature):
    """-mean log(exp(cos(a_i, b_i)/τ) / Σ_j exp(cos(a_i, b_j)/τ)), the reference's InfoNCE."""
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    positive = torch.exp((a * b).sum(1) / temperature)
    total = torch.exp(a @ b.T / temperature).sum(1)
    return -torch.log(positive / total).mean()


def random_weighting(tensors, seed=3):
    """A scalar that mixes every entry of the given tensors (so a gradient check sees them all)."""
    generator = torch.Generator().manual_seed(seed)
    return sum((x * torch.randn(x.shape, generator=generator)).sum() for x in tensors)


# --------------------------------------------------------------------------- training
def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config)
    losses = train_steps(model, first_batch(loaders), 15)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_every_parameter_group_is_trained_by_its_term(run_config):
    """The ID branch only through the alignment term, the noisy copies only through the graph
    InfoNCE, the masking Linear only through the masking term; all get a gradient."""
    _, loaders, model = build(run_config)
    model.train()
    model.calculate_loss(first_batch(loaders)).backward()
    for name in ("id_feat", "id_branch.preference", "perturbed_branches.0.image.preference",
                 "perturbed_branches.1.text.mlp.0.weight", "mask_projection.weight", "user_modality_weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- dense rewrites
def test_perturbed_views_and_graph_infonce_match_the_dense_reference(run_config, monkeypatch):
    _, _, model = build(run_config)
    model.train()
    noise = NoiseQueue()
    monkeypatch.setattr(model, "draw_noise", noise)
    views = model.perturbed_views()
    A, G = dense(model.adjacency), dense(model.item_graph)
    v_feat, t_feat = model.modality_features["image"], model.modality_features["text"]
    assert len(noise.drawn) == 8, "2 views x 2 modalities x 2 propagations"
    expected = []
    for index in range(2):
        branches = model.perturbed_branches[index]
        first = 4 * index
        v = dense_branch(branches["image"], A, v_feat, noise.drawn[first:first + 2])
        t = dense_branch(branches["text"], A, t_feat, noise.drawn[first + 2:first + 4])
        expected.append(dense_fused(model, v, t, G))
    for (users, items), (users_e, items_e) in zip(views, expected):
        assert torch.allclose(users, users_e, atol=1e-5) and torch.allclose(items, items_e, atol=1e-5)
    # the noise really moved the views: each offset row has norm eps in the perturbed layers
    clean = dense_branch(model.perturbed_branches[0]["image"], A, v_feat)
    assert not torch.allclose(clean, dense_branch(model.perturbed_branches[0]["image"], A, v_feat, noise.drawn[:2]))

    # the graph InfoNCE over all users and all items (padding row 0 left out), value and gradient
    noise_again = NoiseQueue()
    monkeypatch.setattr(model, "draw_noise", noise_again)
    term = model.perturbation_term()
    (users_1, items_1), (users_2, items_2) = expected
    reference = dense_info_nce(users_1[1:], users_2[1:], 0.2) + dense_info_nce(items_1[1:], items_2[1:], 0.2)
    assert term.item() == pytest.approx(reference.item(), rel=1e-5)
    parameters = [model.perturbed_branches[0]["image"].preference, model.perturbed_branches[1]["text"].mlp[0].weight,
                  model.user_modality_weight]
    got = torch.autograd.grad(term, parameters)
    want = torch.autograd.grad(reference, parameters)
    for g, w in zip(got, want):
        assert g.abs().sum() > 0 and torch.allclose(g, w, atol=1e-6, rtol=1e-4)


def test_alignment_term_matches_the_dense_reference(run_config):
    _, _, model = build(run_config)
    model.train()
    outputs = model.branch_outputs()
    users, items = model.add_homogeneous(*model.fuse(outputs))
    term = model.alignment_term(users, items, outputs)

    A, G = dense(model.adjacency), dense(model.item_graph)
    n_users = model.n_users
    v = dense_branch(model.branches["image"], A, model.modality_features["image"])
    t = dense_branch(model.branches["text"], A, model.modality_features["text"])
    ids = dense_branch(model.id_branch, A, model.id_feat)
    fused_users, fused_items = dense_fused(model, v, t, G)
    matrices = [torch.cat([fused_users[1:], fused_items[1:]])]
    for x in (ids, v, t):  # the reference's guide / v / t representations: [x ‖ x], items + G
        doubled = torch.cat([x, x], dim=1)
        doubled_items = doubled[n_users:] + G @ doubled[n_users:]
        matrices.append(torch.cat([doubled[1:n_users], doubled_items[1:]]))
    stats = []
    for m in matrices:
        mean = m.sum() / m.numel()
        stats.append((mean, ((m - mean) ** 2).sum() / (m.numel() - 1)))
    reference = sum((va - vb).abs() + (ma - mb).abs() for (ma, va), (mb, vb) in itertools.combinations(stats, 2))
    assert len(list(itertools.combinations(stats, 2))) == 6
    assert term.item() == pytest.approx(reference.item(), rel=1e-5)
    parameters = [model.id_feat, model.id_branch.preference, model.branches["image"].mlp[0].weight,
                  model.user_modality_weight]
    got = torch.autograd.grad(term, parameters, retain_graph=True)
    want = torch.autograd.grad(reference, parameters)
    for g, w in zip(got, want):
        assert g.abs().sum() > 0 and torch.allclose(g, w, atol=1e-7, rtol=1e-4)


def fixed_dropout(monkeypatch, seed=0):
    """Replace F.dropout by a recorded fixed Bernoulli mask (inverted scaling, as F.dropout)."""
    generator = torch.Generator().manual_seed(seed)
    masks = []

    def dropout(x, p, training=True, inplace=False):
        assert training, "the masking term's dropout is always on"
        mask = (torch.rand(x.shape, generator=generator) >= p).to(x.dtype)
        masks.append((mask, p))
        return x * mask / (1 - p)

    monkeypatch.setattr(F, "dropout", dropout)
    return masks


def test_masking_term_matches_the_dense_reference(run_config, monkeypatch):
    _, _, model = build(run_config)
    model.train()
    users, items = model.forward()
    masks = fixed_dropout(monkeypatch)
    term = model.masking_term(users, items)
    assert [p for _, p in masks] == [0.5, 0.5]
    W, b = model.mask_projection.weight, model.mask_projection.bias
    reference = 0.0
    for x, (mask, p) in zip((users[1:], items[1:]), masks):
        masked, projected = x * mask / (1 - p), x @ W.T + b
        cosine = (masked * projected).sum(1) / (masked.norm(dim=1) * projected.norm(dim=1))
        reference = reference + 1 - cosine.mean()
    assert term.item() == pytest.approx(reference.item(), rel=1e-5)
    assert 0.1 < term.item() < 4.0, "neither trivially zero nor saturated"
    parameters = [W, b, model.user_modality_weight, model.branches["text"].preference]
    got = torch.autograd.grad(term, parameters, retain_graph=True)
    want = torch.autograd.grad(reference, parameters)
    for g, w in zip(got, want):
        assert g.abs().sum() > 0 and torch.allclose(g, w, atol=1e-7, rtol=1e-4)


# --------------------------------------------------------------------------- switches
def test_masking_term_trains_by_default_and_not_with_the_no_grad_quirk(run_config, monkeypatch):
    _, loaders, default = build(run_config)
    _, _, quirk = build(run_config, mentor_mask_no_grad_quirk=True)
    quirk.load_state_dict(default.state_dict())
    batch = first_batch(loaders)
    values = {}
    for name, model in (("default", default), ("quirk", quirk)):
        model.train()
        users, items = model.forward()
        fixed_dropout(monkeypatch)
        term = model.masking_term(users, items)
        values[name] = term.item()
        if name == "default":
            grads = torch.autograd.grad(term, [model.mask_projection.weight, model.user_modality_weight])
            assert all(g.abs().sum() > 0 for g in grads)
        else:
            assert not term.requires_grad
        # in the whole loss: only the masking Linear tells the two apart (nothing else reads it)
        torch.manual_seed(0)
        model.zero_grad()
        model.calculate_loss(batch).backward()
        grad = model.mask_projection.weight.grad
        values[name + "_loss_grad"] = 0.0 if grad is None else grad.abs().sum().item()
    assert values["default"] == pytest.approx(values["quirk"], rel=1e-6), "the same value either way"
    assert values["default_loss_grad"] > 0 and values["quirk_loss_grad"] == 0.0


def test_loss_values_agree_between_quirk_settings(run_config):
    """The quirk changes the gradient, not the loss value (same seed for dropout and noise)."""
    _, loaders, default = build(run_config)
    _, _, quirk = build(run_config, mentor_mask_no_grad_quirk=True)
    quirk.load_state_dict(default.state_dict())
    batch = first_batch(loaders)
    losses = []
    for model in (default, quirk):
        model.train()
        torch.manual_seed(1)
        losses.append(model.calculate_loss(batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_shared_perturbed_encoder_reuses_the_main_branches(run_config, monkeypatch):
    _, _, separate = build(run_config)
    _, _, shared = build(run_config, mentor_shared_perturbed_encoder=True)
    assert shared.perturbed_branches is None and separate.perturbed_branches is not None
    names = {n for n, _ in separate.named_parameters()} - {n for n, _ in shared.named_parameters()}
    assert names and all(n.startswith("perturbed_branches.") for n in names)
    shared.load_state_dict(separate.state_dict(), strict=False)
    for model in (separate, shared):
        model.eval()
    with torch.no_grad():
        main = shared.forward()
        assert all(torch.equal(a, b) for a, b in zip(main, separate.forward())), "scored view unchanged"
        # without noise the shared views are the main view; the separate copies are not
        monkeypatch.setattr(shared, "draw_noise", torch.zeros_like)
        monkeypatch.setattr(separate, "draw_noise", torch.zeros_like)
        shared.perturbation_eps = separate.perturbation_eps = 0.0
        for users, items in shared.perturbed_views():
            assert torch.allclose(users, main[0], atol=1e-6) and torch.allclose(items, main[1], atol=1e-6)
        users, _ = separate.perturbed_views()[0]
        assert not torch.allclose(users, main[0], atol=1e-3)


def test_perturbation_eps_sets_the_offset_norm(run_config, monkeypatch):
    """Each perturbed layer moves by exactly eps per row (nonzero entries), the views differ only
    through their noise."""
    from recbole_mm.model.layers import simgcl_perturb

    h = torch.randn(50, 8)
    moved = simgcl_perturb(h, 0.3, torch.rand(50, 8))
    assert torch.allclose((moved - h).norm(dim=1), torch.full((50,), 0.3), atol=1e-6)
    assert ((moved - h) * torch.sign(h) >= 0).all(), "pushed into the row's own orthant"
    _, _, model = build(run_config, perturbation_eps=0.0)
    with torch.no_grad():
        first, second = model.perturbed_views()
        branches = model.perturbed_branches
        A, G = dense(model.adjacency), dense(model.item_graph)
        v = dense_branch(branches[0]["image"], A, model.modality_features["image"])
        t = dense_branch(branches[0]["text"], A, model.modality_features["text"])
        users, items = dense_fused(model, v, t, G)
    assert torch.allclose(first[0], users, atol=1e-5) and torch.allclose(first[1], items, atol=1e-5)


def test_user_graph_is_not_built_unless_switched_on(run_config):
    _, _, plain = build(run_config)
    _, _, with_graph = build(run_config, mentor_user_graph=True)
    assert plain.user_graph is None and not hasattr(plain, "user_graph_sampler")
    assert "user_graph" not in plain.state_dict() and "user_graph" in with_graph.state_dict()
    plain.pre_epoch_processing()  # nothing to draw
    with_graph.load_state_dict({**plain.state_dict(), "user_graph": with_graph.user_graph})
    plain.eval()
    with_graph.eval()
    with torch.no_grad():
        users, items = plain.forward()
        users_g, items_g = with_graph.forward()
    assert torch.equal(items, items_g), "the user graph touches users only"
    assert torch.allclose(users_g, users + torch.sparse.mm(with_graph.user_graph, users), atol=1e-6)


# --------------------------------------------------------------------------- evaluation
def test_eval_forward_is_deterministic_noise_free_and_scores_by_dot_product(run_config, monkeypatch):
    _, loaders, model = build(run_config)
    train_steps(model, first_batch(loaders), 2)
    model.eval()

    def no_noise(like):
        raise AssertionError("evaluation draws no perturbation noise")

    monkeypatch.setattr(model, "draw_noise", no_noise)
    with torch.no_grad():
        users, items = model.forward()
        again = model.forward()
        assert torch.equal(users, again[0]) and torch.equal(items, again[1])
        batch_users = torch.tensor([1, 5, 17])
        scores = model.full_sort_predict(Interaction({model.USER_ID: batch_users}))
    assert torch.allclose(scores.view(3, -1), users[batch_users] @ items.T, atol=1e-5)


def test_mentor_trains_as_a_guider_student(tmp_path):
    run = train_each(tmp_path, ["MENTOR"], "synthetic", [os.path.join(REPO_ROOT, "properties", "guider.yaml")],
                     epochs=1, guider_teacher_pretrain_epochs=1, guider_kd_retry=None)["MENTOR"]
    assert isinstance(run["trainer"], GUIDERTrainer) and run["trainer"].teacher_epochs == 2
    assert 0.0 <= run["test_result"]["recall@20"] <= 1.0


def test_chunked_info_nce_equals_the_dense_infonce_in_value_and_gradient():
    from recbole_mm.model.loss import chunked_info_nce

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(53, 8, generator=generator, requires_grad=True)
    b = torch.randn(53, 8, generator=generator, requires_grad=True)
    reference = dense_info_nce(a, b, 0.4)
    for chunk in (7, 53, 100):  # several chunks (checkpointed), one, and the plain path
        value = chunked_info_nce(a, b, 0.4, chunk_size=chunk)
        assert value.item() == pytest.approx(reference.item(), rel=1e-6)
        got, want = torch.autograd.grad(value, [a, b]), torch.autograd.grad(reference, [a, b], retain_graph=True)
        assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))
