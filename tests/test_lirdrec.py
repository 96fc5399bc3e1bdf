"""LIRDRec and FREEDOM: DCT, progressive weight copying, ablation switches, accuracy."""
import numpy as np
import pytest
import torch
from scipy import fft

from recbole_mm.model.layers import dct_features, inverse_dct_features
from recbole_mm.model.freedom import FREEDOM
from recbole_mm.model.lirdrec import LIRDRec
from tests.conftest import build_model


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
        assert model.copy_weights == pytest.approx([w1, w2])
        history.append(model.copy_weights[0])
        assert torch.equal(model.target_weights.detach(), last)
        assert torch.allclose(last.sum(dim=1), torch.ones(model.n_users))
    assert all(b < a for a, b in zip(history, history[1:])), "w1 decays every epoch"
    assert sum(model.copy_weights) == pytest.approx(1.0)


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
