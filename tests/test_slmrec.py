"""SLMRec: positive-only batches, the three LightGCN branches and fusion against a dense rewrite,
the main InfoNCE and the FAC task (value and gradient) against MMRec's formulas written densely,
the stale-evaluation switch, the one-modality (kwai) branch, bad settings, GUIDER end to end."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

from recbole_mm.errors import ConfigError
from recbole_mm.model.slmrec import SLMRec
from recbole_mm.trainer import GUIDERTrainer, MultiModalTrainer
from tests.conftest import REPO_ROOT, build_model, train_each, train_steps, train_steps_one_thread


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), SLMRec)
    return config, loaders, model


def perturb(model, scale=0.05):
    """Move every parameter off its initial values (zero biases, symmetric tables)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


def dense_adjacency(model):
    """MMRec's ``adj_type: pre``: D^-1/2 [[0, R], [R^T, 0]] D^-1/2 of the train matrix R, dense."""
    r = torch.zeros(model.n_users, model.n_items)
    coo = model.interaction_matrix
    r[torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)] = 1.0
    n = model.n_users + model.n_items
    a = torch.zeros(n, n)
    a[:model.n_users, model.n_users:] = r
    a[model.n_users:, :model.n_users] = r.T
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return d[:, None] * a * d[None, :]


def dense_representations(model, adjacency):
    """The reference's ``compute()`` written densely: per branch the mean of layers 0..3 of
    [E_U; item table], then the concat through the user / item heads. Returns
    (z_U, z_I, [item rows of each branch])."""
    tables = [model.item_id_embedding]
    for name in ("image", "text"):
        raw = model.modality_features[name]
        normalized = raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
        tables.append(normalized @ model.projections[name].weight.T + model.projections[name].bias)
    user_parts, item_parts = [], []
    for table in tables:
        layer = torch.cat([model.user_embedding, table])
        layers = [layer]
        for _ in range(3):
            layer = adjacency @ layer
            layers.append(layer)
        out = sum(layers) / 4
        user_parts.append(out[:model.n_users])
        item_parts.append(out[model.n_users:])
    users = torch.cat(user_parts, 1) @ model.user_fusion.weight.T + model.user_fusion.bias
    items = torch.cat(item_parts, 1) @ model.item_fusion.weight.T + model.item_fusion.bias
    return users, items, item_parts


def cross_entropy_on_diagonal(logits):
    """-mean_i log softmax(logits)_ii, spelled out."""
    return -(logits.diag() - logits.exp().sum(1).log()).mean()


def linear(layer, x):
    return x @ layer.weight.T + layer.bias


def dense_reference_loss(model, users, items, ssl_weight=0.01):
    """MMRec's ``calculate_loss`` for FAC: infonce(users, pos) + ssl_alpha * fac(pos)."""
    z_users, z_items, item_parts = dense_representations(model, dense_adjacency(model))
    u = z_users[users] / z_users[users].norm(dim=1, keepdim=True)
    i = z_items[items] / z_items[items].norm(dim=1, keepdim=True)
    main = cross_entropy_on_diagonal(u @ i.T / 0.2)
    x_i_iv = linear(model.id_head, item_parts[0][items])
    x_v_iv = linear(model.first_modality_head, item_parts[1][items])
    v_loss = cross_entropy_on_diagonal(x_i_iv @ x_v_iv.T / 0.1)
    x_iva_ivat = linear(model.chain_out_head, linear(model.chain_head, x_i_iv))
    x_t_ivat = linear(model.second_modality_head, item_parts[2][items])
    t_loss = cross_entropy_on_diagonal(x_iva_ivat @ x_t_ivat.T / 0.1)
    return main + ssl_weight * (v_loss + t_loss)


def test_batches_are_positive_pairs_only(run_config):
    """MMRec draws a negative per row and never reads it: no negatives, even when a user file
    (properties/mmrec_baby.yaml) asks for them."""
    config, (train, _, _), model = build(run_config)
    assert config["weight_decay"] == pytest.approx(1e-4)
    for config, (train, _, _), model in (build(run_config), build(run_config, train_neg_sample_args=dict(
            distribution="uniform", sample_num=1, alpha=1.0, dynamic=False, candidate_num=0))):
        assert config["train_neg_sample_args"]["distribution"] == "none" and train._sampler is None
        assert model.NEG_ITEM_ID not in next(iter(train))


def test_representations_match_the_dense_three_branch_rewrite(run_config):
    _, _, model = build(run_config)
    perturb(model)
    with torch.no_grad():
        users, items, _ = dense_representations(model, dense_adjacency(model))
    model.eval()
    got_users, got_items = model.forward()
    assert torch.allclose(got_users, users, atol=1e-5) and torch.allclose(got_items, items, atol=1e-5)
    again = model.forward()
    assert torch.equal(again[0], got_users) and torch.equal(again[1], got_items), "eval forward is deterministic"
    scores = model.full_sort_predict(Interaction({model.USER_ID: torch.arange(model.n_users)}))
    assert torch.allclose(scores.view(model.n_users, -1), users @ items.T, atol=1e-5)
    pairs = Interaction({model.USER_ID: torch.tensor([1, 2]), model.ITEM_ID: torch.tensor([3, 4])})
    assert torch.allclose(model.predict(pairs), (users[[1, 2]] * items[[3, 4]]).sum(1), atol=1e-5)
    assert torch.allclose(model.score_rows(torch.tensor([1, 2]), torch.tensor([3, 4])), (users @ items.T)[1:3, 3:5],
                          atol=1e-5)


def test_loss_and_gradient_match_mmrecs_infonce_plus_fac(run_config):
    """Main InfoNCE (cosine / 0.2) + 0.5 * FAC (ID<->image, chained head against text, raw
    dot products / 0.1), value and gradient of every parameter."""
    _, (train, _, _), model = build(run_config, ssl_weight=0.5)
    perturb(model)
    batch = next(iter(train))
    users, items = batch[model.USER_ID], batch[model.ITEM_ID]
    assert len(torch.unique(items)) < len(items), "the batch repeats items: they count as in-batch negatives"
    model.train()
    loss = model.calculate_loss(batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = dense_reference_loss(model, users, items, ssl_weight=0.5)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for (name, _), got, want in zip(model.named_parameters(), grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for (n, _), g in zip(model.named_parameters(), grads) if n.startswith("chain"))


def test_ssl_weight_scales_only_the_fac_term(run_config):
    _, (train, _, _), model = build(run_config)
    perturb(model)
    batch = next(iter(train))
    users, items = batch[model.USER_ID], batch[model.ITEM_ID]
    _, _, plain = build(run_config, ssl_weight=0.0)
    plain.load_state_dict(model.state_dict())
    model.train(), plain.train()
    with torch.no_grad():
        main = dense_reference_loss(model, users, items, ssl_weight=0.0)
        assert plain.calculate_loss(batch).item() == pytest.approx(main.item(), rel=1e-5)
        assert model.calculate_loss(batch).item() == pytest.approx(
            dense_reference_loss(model, users, items).item(), rel=1e-5)
        assert model.calculate_loss(batch).item() != pytest.approx(main.item(), rel=1e-5)


def test_single_modality_uses_mmrecs_kwai_branch(run_config):
    """One modality: two branches (ID, image) fused from 2d, FAC = the ID<->image term only."""
    _, (train, _, _), model = build(run_config, modalities=["image"])
    assert model.user_fusion.in_features == 2 * model.embedding_size and not hasattr(model, "chain_head")
    perturb(model)
    batch = next(iter(train))
    items = batch[model.ITEM_ID]
    model.train()
    with torch.no_grad():
        branches = model.branch_embeddings()
        fac = cross_entropy_on_diagonal(
            linear(model.id_head, branches[0][1][items]) @ linear(model.first_modality_head, branches[1][1][items]).T
            / 0.1)
        users, fused_items = model.fuse(branches)
        main = F.cross_entropy(F.normalize(users[batch[model.USER_ID]]) @ F.normalize(fused_items[items]).T / 0.2,
                               torch.arange(len(items)))
        assert model.calculate_loss(batch).item() == pytest.approx((main + 0.01 * fac).item(), rel=1e-5)


def test_stale_eval_quirk_scores_with_the_last_training_forward(run_config):
    """True: evaluation ranks with (z_U, z_I) of the last training step, before its update, and
    the checkpointed buffers carry them; the training loss is unchanged. False: a fresh forward."""
    _, (train, _, _), fixed = build(run_config)
    _, _, stale = build(run_config, slmrec_stale_eval_quirk=True)
    stale.load_state_dict(fixed.state_dict(), strict=False)
    batch = next(iter(train))
    all_users = Interaction({fixed.USER_ID: torch.arange(fixed.n_users)})
    stale.eval()
    with torch.no_grad():
        assert torch.equal(stale.full_sort_predict(all_users), fixed.eval().full_sort_predict(all_users)), \
            "before any training step: the fresh forward"
    losses = {}
    for name, model in (("fixed", fixed), ("stale", stale)):
        torch.manual_seed(0)
        model.train()
        with torch.no_grad():
            before = model.forward()
        losses[name] = train_steps_one_thread(model, batch, 1, lr=0.05)
        model.eval()
        scores = model.full_sort_predict(all_users).view(model.n_users, -1)
        with torch.no_grad():
            after = model.forward()
        losses[name + "_before"] = torch.allclose(scores, before[0] @ before[1].T, atol=1e-5)
        losses[name + "_after"] = torch.allclose(scores, after[0] @ after[1].T, atol=1e-5)
    assert losses["fixed"] == losses["stale"]
    assert losses["fixed_after"] and not losses["fixed_before"]
    assert losses["stale_before"] and not losses["stale_after"]
    assert {"stale_users", "stale_items", "stale_ready"} <= set(stale.state_dict())
    assert not any(key.startswith("stale") for key in fixed.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fixed.parameters(), stale.parameters())), "same updates"


def test_loss_falls_on_a_fixed_batch(run_config):
    _, (train, _, _), model = build(run_config)
    losses = train_steps(model, next(iter(train)), 20, lr=0.01)
    assert losses[-1] < 0.8 * losses[0]


def test_bad_settings_raise(run_config):
    with pytest.raises(ConfigError, match="ssl_task"):
        build(run_config, ssl_task="FD")
    with pytest.raises(ConfigError, match="ssl_weight"):
        build(run_config, ssl_weight=-1.0)
    with pytest.raises(ConfigError, match="slmrec_stale_eval_quirk"):
        build(run_config, slmrec_stale_eval_quirk="maybe")
    config, _, model = build(run_config, denoise="rce")
    with pytest.raises(ValueError, match="SLMRec computes its loss without a BPRLoss"):
        MultiModalTrainer(config, model)


def test_trains_end_to_end_under_guider(tmp_path):
    run = train_each(tmp_path, ["SLMRec"], "synthetic", [os.path.join(REPO_ROOT, "properties", "guider.yaml")],
                     epochs=1, guider_teacher_pretrain_epochs=1, learning_rate=0.01)["SLMRec"]
    assert isinstance(run["trainer"], GUIDERTrainer)
    assert np.isfinite(run["test_result"]["recall@20"])
