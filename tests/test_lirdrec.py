"""LIRDRec and FREEDOM: DCT, progressive weight copying, ablation switches, accuracy."""
import copy

import numpy as np
import pytest
import torch
from scipy import fft

from recbole_mm.model.layers import dct_features, inverse_dct_features
from recbole_mm.model.freedom import FREEDOM
from recbole_mm.model.lirdrec import LIRDRec
from tests.conftest import build_model, train_steps


@pytest.mark.parametrize("mode", ["1d", "2d", "none"])
def test_dct_round_trip_and_orthonormality(mode):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 12)).astype(np.float32)
    y = dct_features(x, mode)
    np.testing.assert_allclose(inverse_dct_features(y, mode), x, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-5)
    if mode == "1d":
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
        basis = fft.dct(np.eye(12), type=2, norm="ortho", axis=0)   # columns: DCT of unit vectors
        np.testing.assert_allclose(basis.T @ basis, np.eye(12), atol=1e-10)
        np.testing.assert_allclose(y, x @ basis.T, atol=1e-4)
    if mode == "2d":
        assert not np.allclose(y[:, :], dct_features(x, "1d")), "2-D mixes items too"
        shuffled = dct_features(x[::-1], "2d")
        assert not np.allclose(shuffled[1:], y[1:]), "2-D depends on the item order"


@pytest.mark.parametrize("symmetric", [False, True])
def test_frozen_sparse_gives_torch_sparse_products_and_gradients(symmetric):
    from recbole_mm.model.layers import FrozenSparse, propagate

    generator = torch.Generator().manual_seed(0)
    dense = torch.rand(30, 30, generator=generator) * (torch.rand(30, 30, generator=generator) < 0.2)
    matrix = (dense + dense.T if symmetric else dense).to_sparse()
    frozen = FrozenSparse(matrix, symmetric=symmetric)
    x = torch.randn(30, 5, generator=generator, requires_grad=True)
    weights = torch.randn(30, 5, generator=generator)
    for combine in ("sum", "mean", "last"):
        ours = propagate(frozen, x, 2, combine)
        (grad,) = torch.autograd.grad((ours * weights).sum(), x)
        layers = [x, torch.sparse.mm(matrix, x)]
        layers.append(torch.sparse.mm(matrix, layers[-1]))
        expected = {"sum": sum(layers), "mean": sum(layers) / 3, "last": layers[-1]}[combine]
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
        assert torch.allclose(ours, expected, atol=1e-5) and torch.allclose(grad, expected_grad, atol=1e-5)
    assert torch.equal(frozen.to_dense(), matrix.to_dense())
    assert copy.deepcopy({"graph": frozen})["graph"] is frozen, "a copied model shares the fixed graph"


def build(run_config, model_class=LIRDRec, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), model_class)
    return config, loaders, model


def train_step(model, train):
    model.train()
    batch = next(iter(train))
    model.calculate_loss(batch).backward()


def test_pwc_copies_the_last_attention_and_decays_its_mixing_weights(run_config):
    _, (train, _, _), model = build(run_config, decay_weight=0.9, decay_base=0.9)
    w1, w2 = 0.9, 0.1
    history = [w1]
    for epoch in (1, 2, 3):
        train_step(model, train)
        last = model.last_attention.clone()
        model.pre_epoch_processing()
        decayed = w1 * 0.9 ** epoch
        w1, w2 = decayed / (decayed + w2), w2 / (decayed + w2)
        assert model.copy_weights.tolist() == pytest.approx([w1, w2])
        assert int(model.copy_epoch) == epoch
        history.append(model.copy_weights[0].item())
        assert torch.equal(model.target_weights.detach(), last)
        assert torch.allclose(last.sum(dim=1), torch.ones(model.n_users))
    assert all(b < a for a, b in zip(history, history[1:])), "w1 decays every epoch"
    assert model.copy_weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("shared", [False, True])
def test_pwc_has_one_scorer_per_branch_unless_shared(run_config, shared):
    _, (train, _, _), model = build(run_config, pwc_shared_scorer=shared)
    scorers = [model.weight_scorers[name] for name in model.branch_names]
    assert len(scorers) == 3
    distinct = {id(p) for scorer in scorers for p in scorer.parameters()}
    assert len(distinct) == (2 * 2 if shared else 3 * 2 * 2), "(fc1, fc2) x (weight, bias) per scorer"
    before = [[p.detach().clone() for p in scorer.parameters()] for scorer in scorers]
    train_steps(model, next(iter(train)), 1, lr=1e-2)
    for scorer, old in zip(scorers, before):
        params = list(scorer.parameters())
        for index, (param, value) in enumerate(zip(params, old)):
            if shared and index == len(params) - 1:
                # the shared scorer's output bias adds one constant to every branch's logit, which
                # the softmax over branches cancels: its gradient is zero up to rounding
                assert param.grad is None or param.grad.abs().max() < 1e-6
                continue
            assert param.grad is not None and param.grad.abs().sum() > 0, "every scorer gets gradient"
            assert not torch.equal(param.detach(), value), "and is trained"
    if not shared:  # each branch's logit comes from its own scorer
        parts = torch.chunk(torch.randn(model.n_users, 3 * model.embedding_size), 3, dim=1)
        with torch.no_grad():
            attention = model.user_attention(parts)
            image, text = model.weight_scorers["image"], model.weight_scorers["text"]
            model.weight_scorers["image"], model.weight_scorers["text"] = text, image
            assert not torch.allclose(model.user_attention(parts), attention)


def test_user_scale_multiplies_users_only(run_config):
    _, _, plain = build(run_config, use_pwc=False)
    _, _, scaled = build(run_config, use_pwc=False, user_scale=1 / 3)
    scaled.load_state_dict(plain.state_dict())
    plain.eval(), scaled.eval()
    (users, items), (scaled_users, scaled_items) = plain.forward(), scaled.forward()
    assert torch.allclose(scaled_users, users / 3, atol=1e-6)
    assert torch.equal(scaled_items, items)


def test_pwc_state_is_part_of_the_state_dict(run_config):
    _, (train, _, _), model = build(run_config)
    for _ in range(3):
        train_step(model, train)
        model.pre_epoch_processing()
    train_step(model, train)
    state = model.state_dict()
    for name in ("copy_weights", "copy_epoch", "last_attention", "target_weights"):
        assert name in state
    _, _, fresh = build(run_config, seed=11)
    assert not torch.equal(fresh.copy_weights, model.copy_weights)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.copy_weights, model.copy_weights) and int(fresh.copy_epoch) == 3
    model.eval(), fresh.eval()
    assert torch.equal(fresh.forward()[0], model.forward()[0])
    model.pre_epoch_processing(), fresh.pre_epoch_processing()   # training resumes identically
    assert torch.equal(fresh.copy_weights, model.copy_weights)
    assert torch.equal(fresh.target_weights, model.target_weights)


def test_best_checkpoint_restores_its_epochs_weight_copying(run_config):
    """The test pass after training pairs the best epoch's θ with that epoch's (w1, w2)."""
    from recbole_mm.config import Config
    from recbole_mm.quick_start import _build, _trainer, load_data_and_model

    config = Config(LIRDRec, "synthetic", None, run_config(epochs=4, learning_rate=0.01))
    _, (train, valid, test), model = _build(config)
    trainer = _trainer(config, model)
    # early stopping ranks valid scores the other way round (Config fixes valid_metric_bigger by
    # the metric's name): the "best" epoch is the lowest valid recall, an early epoch whose
    # (w1, w2) differ from the last epoch's
    trainer.valid_metric_bigger, trainer.best_valid_score = False, float("inf")
    epochs = []

    def record(epoch, valid_score):
        epochs.append((valid_score, model.copy_weights.clone(), dict(trainer.evaluate(test, load_best_model=False))))

    trainer.fit(train, valid, saved=True, callback_fn=record)
    best = max(i for i, (score, _, _) in enumerate(epochs) if score == min(s for s, _, _ in epochs))
    assert best != len(epochs) - 1
    best_weights, best_test = epochs[best][1], epochs[best][2]
    assert not torch.allclose(best_weights, model.copy_weights), "w1/w2 moved after the best epoch"

    assert dict(trainer.evaluate(test, load_best_model=True)) == best_test
    assert torch.equal(model.copy_weights, best_weights)
    _, reloaded, _, _, _, reloaded_test = load_data_and_model(trainer.saved_model_file)
    assert torch.equal(reloaded.copy_weights, best_weights)
    assert dict(_trainer(config, reloaded).evaluate(reloaded_test, load_best_model=False)) == best_test


def test_users_are_attention_weighted_branch_parts(run_config):
    _, _, model = build(run_config)
    model.eval()
    users, _ = model.forward()
    _, _, plain = build(run_config, use_pwc=False)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    raw_users, raw_items = plain.forward()
    parts = torch.chunk(raw_users, 3, dim=1)
    attention = model.user_attention(parts)
    expected = torch.cat([attention[:, m:m + 1] * part for m, part in enumerate(parts)], dim=1)
    assert torch.allclose(users, expected, atol=1e-6)
    assert torch.allclose(model.forward()[1], raw_items), "PWC changes users only"


def test_ablation_switches_change_only_their_part(run_config):
    _, _, full = build(run_config)
    assert full.branch_names == ["image", "text", "shared"]
    image, text = full.modality_features["image"], full.modality_features["text"]
    expected_shared = torch.cat([torch.from_numpy(dct_features(image[1:].numpy())),
                                 torch.from_numpy(dct_features(text[1:].numpy()))], dim=1)
    assert torch.allclose(full.branch_inputs["shared"][1:], expected_shared, atol=1e-5)
    assert torch.all(full.branch_inputs["shared"][0] == 0)

    _, _, no_dct = build(run_config, dct_mode="none")
    assert no_dct.branch_names == ["image", "text"]
    assert torch.equal(no_dct.branch_inputs["image"], full.branch_inputs["image"])

    _, _, no_visual = build(run_config, use_visual=False)
    assert no_visual.branch_names == ["text", "shared"]
    assert torch.allclose(no_visual.branch_inputs["shared"][1:], expected_shared[:, image.shape[1]:], atol=1e-5)

    _, _, no_text = build(run_config, use_textual=False)
    assert no_text.branch_names == ["image", "shared"]
    assert torch.allclose(no_text.branch_inputs["shared"][1:], expected_shared[:, :image.shape[1]], atol=1e-5)
    assert torch.equal(no_text.item_graph.to_dense(), full.item_knn_graph(10, {"image": 1.0}).to_dense())

    _, _, two_d = build(run_config, dct_mode="2d")
    assert torch.allclose(two_d.branch_inputs["shared"][1:, :image.shape[1]],
                          torch.from_numpy(dct_features(image[1:].numpy(), "2d")), atol=1e-4)


def test_no_item_id_embeddings(run_config):
    _, _, model = build(run_config)
    assert not any(p.shape[0] == model.n_items for p in model.parameters()), "items come from features only"


def test_freedom_prunes_for_training_and_predicts_on_the_full_graph(run_config):
    _, (train, _, _), model = build(run_config, FREEDOM, dropout=0.5)
    model.pre_epoch_processing()
    assert model.train_adjacency._nnz() == 2 * int(model.edge_sampler.users.numel() * 0.5)
    model.eval()
    users, items = model.forward()
    graph_part = torch.sparse.mm(model.item_graph, model.item_id_embedding)
    from recbole_mm.model.layers import propagate
    ego = torch.cat([model.user_embedding, model.item_id_embedding])
    nodes = propagate(model.full_adjacency, ego, 2, "mean")
    assert torch.allclose(users, nodes[:model.n_users], atol=1e-6)
    assert torch.allclose(items, nodes[model.n_users:] + graph_part, atol=1e-6)


def test_freedom_feature_loss_switch(run_config):
    _, (train, _, _), model = build(run_config, FREEDOM, reg_weight=0.0)
    batch = next(iter(train))
    model.train()
    base = model.calculate_loss(batch)
    model.reg_weight = 1.0
    with_features = model.calculate_loss(batch)
    assert with_features > base
    with_features.backward()
    assert model.text_projection.weight.grad is not None and model.image_features.grad is not None
