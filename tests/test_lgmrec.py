"""LGMRec: local (CGE + MGE) and global (hypergraph) embeddings and the triple InfoNCE against
dense rewrites of MMRec's formulas, the evaluation rule, the quirk switches, the per-dataset
defaults, a GUIDER run."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from recbole_mm.config import Config
from recbole_mm.errors import ConfigError
from recbole_mm.model import lgmrec as lgmrec_module
from recbole_mm.model.lgmrec import LGMRec
from tests.conftest import REPO_ROOT, build_model, train_each, train_steps

TAU = 0.2


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), LGMRec)
    return config, loaders, model


def perturb(model):
    """Leave the initial values' symmetries behind (the features stay as the dataset gave them)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))


def fixed_noise(shape):
    """Deterministic stand-in for Gumbel noise, a function of the shape only."""
    count = shape[0] * shape[1]
    return torch.sin(torch.arange(count, dtype=torch.float32) * 0.7).reshape(shape)


def fixed_gumbel_softmax(logits, tau=1.0, hard=False, dim=-1):
    return torch.softmax((logits + fixed_noise(logits.shape)) / tau, dim=dim)


def dense_reference(model, noise=True):
    """MMRec's forward written densely: (final (U + I) x d, {modality: global view}), with the
    Gumbel noise replaced by :func:`fixed_noise` (``noise``) or left out, and no dropout."""
    n_users = model.n_users
    inter = torch.zeros(model.n_users, model.n_items)
    matrix = model.interaction_matrix
    inter[torch.as_tensor(matrix.row, dtype=torch.long), torch.as_tensor(matrix.col, dtype=torch.long)] = 1.0
    adjacency = torch.zeros(n_users + model.n_items, n_users + model.n_items)
    adjacency[:n_users, n_users:] = inter
    adjacency[n_users:, :n_users] = inter.T
    degree = adjacency.sum(1) + 1e-7
    norm_adj = degree.pow(-0.5)[:, None] * adjacency * degree.pow(-0.5)[None, :]

    ego = torch.cat([model.user_embedding, model.item_id_embedding])
    layers = [ego]
    for _ in range(2):
        layers.append(norm_adj @ layers[-1])
    cge = torch.stack(layers, dim=1).mean(dim=1)

    def relax(logits):
        return torch.softmax((logits + (fixed_noise(logits.shape) if noise else 0.0)) / TAU, dim=1)

    local, views = cge, {}
    for name in ("image", "text"):
        features = model.features[name]
        item_feats = features @ model.projections[name]
        user_feats = (inter @ item_feats) / (inter.sum(1, keepdim=True) + 1e-7)
        mge = torch.cat([user_feats, item_feats])
        for _ in range(2):
            mge = norm_adj @ mge
        local = local + F.normalize(mge)
        item_hyper = features @ model.hyperedges[name]
        user_hyper = inter @ item_hyper
        item_assign, user_assign = relax(item_hyper), relax(user_hyper)
        item_assign = torch.cat([torch.zeros_like(item_assign[:1]), item_assign[1:]])  # padding item left out
        item_ret = cge[n_users:]
        for _ in range(model.n_hyper_layer):
            lat = item_assign.T @ item_ret
            item_ret = item_assign @ lat
            user_ret = user_assign @ lat
        views[name] = torch.cat([user_ret, item_ret])
    final = local + model.alpha * F.normalize(views["image"] + views["text"])
    return final, views


def dense_triple_nce(emb1, emb2, all_emb):
    """MMRec's ``ssl_triple_loss``, verbatim in formula."""
    norm1, norm2, norm_all = F.normalize(emb1), F.normalize(emb2), F.normalize(all_emb)
    pos = torch.exp((norm1 * norm2).sum(1) / TAU)
    total = torch.exp(norm1 @ norm_all.T / TAU).sum(1)
    return -torch.log(pos / total).sum()


def gradients(outputs, parameters):
    probe = [torch.randn_like(output, generator=torch.Generator().manual_seed(i)) for i, output in enumerate(outputs)]
    loss = sum((output * weight).sum() for output, weight in zip(outputs, probe))
    return torch.autograd.grad(loss, parameters)


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("n_hyper_layer", [1, 2])
def test_training_views_match_mmrecs_formulas_with_fixed_noise(run_config, monkeypatch, n_hyper_layer):
    """The hypergraph propagation (and the local part): value and gradient, with the Gumbel
    noise fixed and keep_rate 1 (no dropout)."""
    _, _, model = build(run_config, keep_rate=1.0, n_hyper_layer=n_hyper_layer)
    perturb(model)
    monkeypatch.setattr(lgmrec_module.F, "gumbel_softmax", fixed_gumbel_softmax)
    model.train()
    final, views = model.views()
    expected_final, expected_views = dense_reference(model, noise=True)
    outputs, expected = [final, views["image"], views["text"]], [expected_final, expected_views["image"],
                                                                  expected_views["text"]]
    for got, want in zip(outputs, expected):  # float32 round-off relative to the largest entry
        scale = want.abs().max().item()
        assert torch.allclose(got, want, atol=1e-5 * scale, rtol=1e-4), ((got - want).abs().max(), scale)
    for got, want in zip(gradients(outputs, trainable(model)), gradients(expected, trainable(model))):
        scale = want.abs().max().item()
        assert torch.allclose(got, want, atol=1e-5 * scale, rtol=1e-4), ((got - want).abs().max(), scale)
    assert views["image"][model.n_users:].abs().sum() > 0 and views["text"][:model.n_users].abs().sum() > 0


def test_eval_views_are_the_noise_free_softmax_without_dropout(run_config):
    _, _, model = build(run_config)
    perturb(model)
    model.eval()
    with torch.no_grad():
        final, views = model.views()
        again, _ = model.views()
        expected_final, expected_views = dense_reference(model, noise=False)
    assert torch.equal(final, again)
    assert torch.allclose(final, expected_final, atol=1e-5)
    assert torch.allclose(views["text"], expected_views["text"], atol=1e-5)


def test_training_draws_gumbel_noise_and_dropout(run_config, monkeypatch):
    _, _, model = build(run_config)
    model.train()
    first, second = model.views()[1]["image"], model.views()[1]["image"]
    assert not torch.allclose(first, second)
    with monkeypatch.context() as patch:  # Gumbel noise fixed: the views still differ by the dropout masks
        patch.setattr(lgmrec_module.F, "gumbel_softmax", fixed_gumbel_softmax)
        assert not torch.allclose(model.views()[1]["text"], model.views()[1]["text"])
        model.assignment_dropout.p = 0.0
        assert torch.equal(model.views()[1]["text"], model.views()[1]["text"])
        model.assignment_dropout.p = 0.5
    assignments = model.hyperedge_assignments()["image"][1]
    assert torch.allclose(assignments[1:].sum(1), torch.ones(model.n_items - 1), atol=1e-5)
    assert assignments[0].abs().sum() == 0, "the padding item joins no hyperedge"
    dropped = model.assignment_dropout(assignments)  # keep_rate 0.5: half dropped, the rest doubled
    kept = dropped[1:] != 0
    assert 0.35 < kept.float().mean() < 0.65
    assert torch.allclose(dropped[1:][kept], 2 * assignments[1:][kept])


def test_triple_infonce_matches_mmrec_value_and_gradient(run_config):
    _, (train, _, _), model = build(run_config)
    batch = next(iter(train))
    users, items = batch[model.USER_ID], batch[model.ITEM_ID]
    n_users = model.n_users
    torch.manual_seed(3)
    image = torch.randn(n_users + model.n_items, 8, requires_grad=True)
    text = torch.randn(n_users + model.n_items, 8, requires_grad=True)
    got = model.hypergraph_contrast({"image": image, "text": text}, users, items)
    image_u, image_i = image[:n_users], image[n_users:]
    text_u, text_i = text[:n_users], text[n_users:]
    # MMRec's tables hold no padding row: every real user / item is a candidate
    want = (dense_triple_nce(image_u[users], text_u[users], text_u[1:])
            + dense_triple_nce(image_i[items], text_i[items], text_i[1:]))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert want.item() > len(users), "a sum over the batch, not a mean"
    for g, w in zip(torch.autograd.grad(got, [image, text]), torch.autograd.grad(want, [image, text])):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4)


def test_loss_is_bpr_plus_contrast_plus_unsquared_norms(run_config, monkeypatch):
    _, (train, _, _), model = build(run_config, keep_rate=1.0, cl_weight=0.01, reg_weight=0.001)
    perturb(model)
    monkeypatch.setattr(lgmrec_module.F, "gumbel_softmax", fixed_gumbel_softmax)
    batch = next(iter(train))
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    model.train()
    total = model.calculate_loss(batch)
    with torch.no_grad():
        final, views = dense_reference(model)
        n_users = model.n_users
        u, i, j = final[users], final[n_users + pos], final[n_users + neg]
        bpr = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
        cl = (dense_triple_nce(views["image"][users], views["text"][users], views["text"][1:n_users])
              + dense_triple_nce(views["image"][n_users + pos], views["text"][n_users + pos],
                                 views["text"][n_users + 1:]))
        reg = (u.norm() + i.norm() + j.norm()) / len(users)
    assert total.dim() == 0
    assert total.item() == pytest.approx((bpr + 0.01 * cl + 0.001 * reg).item(), rel=1e-5)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, (train, _, _), model = build(run_config)
    torch.manual_seed(0)
    losses = train_steps(model, next(iter(train)), 15, lr=0.03)
    assert losses[-1] < 0.9 * losses[0], losses


def test_full_sort_predict_is_forwards_dot_products_and_deterministic(run_config):
    _, (_, valid, _), model = build(run_config)
    perturb(model)
    model.eval()
    users, items = model.forward()
    again = model.forward()
    assert torch.equal(users, again[0]) and torch.equal(items, again[1])
    interaction = next(iter(valid))[0]
    scores = model.full_sort_predict(interaction).reshape(len(interaction[model.USER_ID]), -1)
    assert torch.allclose(scores, users[interaction[model.USER_ID]] @ items.T, atol=1e-5)


def test_eval_noise_quirk_changes_only_the_eval_assignments(run_config):
    _, (train, _, _), plain = build(run_config)
    _, _, noisy = build(run_config, lgmrec_eval_noise_quirk=True)
    noisy.load_state_dict(plain.state_dict())
    for model in (plain, noisy):
        model.eval()
    with torch.no_grad():
        assert torch.equal(plain.collaborative_embeddings(), noisy.collaborative_embeddings())
        assert torch.equal(plain.modality_embeddings("image"), noisy.modality_embeddings("image"))
        first, second = noisy.forward()[1], noisy.forward()[1]
        assert not torch.allclose(first, second), "MMRec draws Gumbel noise at every prediction"
        assert torch.equal(plain.forward()[1], plain.forward()[1])
    batch = next(iter(train))
    losses = []
    for model in (plain, noisy):  # training is the same with and without the switch
        model.train()
        torch.manual_seed(5)
        losses.append(model.calculate_loss(batch).item())
    assert losses[0] == losses[1]


def test_user_assignment_quirk_is_the_authors_pre_fix_user_assignments(run_config):
    _, _, plain = build(run_config)
    _, _, quirk = build(run_config, lgmrec_user_assignment_quirk=True)
    quirk.load_state_dict(plain.state_dict())
    for model in (plain, quirk):
        model.eval()
    with torch.no_grad():
        fixed, broken = plain.hyperedge_assignments(), quirk.hyperedge_assignments()
        text_user_logits = quirk.user_item_sum.mm(quirk.features["text"] @ quirk.hyperedges["text"])
        for name in ("image", "text"):
            assert torch.equal(fixed[name][1], broken[name][1]), "item assignments unchanged"
        assert torch.equal(broken["image"][0], fixed["text"][0]), "image users take the text users' softmax"
        assert torch.equal(broken["text"][0], text_user_logits), "text users keep their raw logits"
        assert not torch.allclose(broken["image"][0], fixed["image"][0])
        assert torch.equal(plain.collaborative_embeddings(), quirk.collaborative_embeddings())
    with pytest.raises(ConfigError, match="exactly two modalities"):
        build(run_config, lgmrec_user_assignment_quirk=True, modalities=["text"])


def test_feat_embed_dim_other_than_embedding_size_is_refused(run_config):
    assert build(run_config, feat_embed_dim=64)[2].projections["text"].shape == (64, 64)
    with pytest.raises(ConfigError, match="feat_embed_dim"):
        build(run_config, feat_embed_dim=32)


def test_mf_cge_and_single_modality(run_config):
    _, (train, _, _), model = build(run_config, cf_model="mf", modalities=["text"])
    assert torch.equal(model.collaborative_embeddings(),
                       torch.cat([model.user_embedding, model.item_id_embedding]))
    batch = next(iter(train))
    model.train()
    _, views = model.views()
    assert list(views) == ["text"]
    assert model.hypergraph_contrast(views, batch[model.USER_ID], batch[model.ITEM_ID]) == 0.0


def test_per_dataset_defaults_from_the_model_yaml(run_config, tmp_path, monkeypatch):
    keys = ("n_hyper_layer", "hyper_num", "keep_rate", "alpha")
    expected = {"synthetic": (1, 4, 0.5, 0.3), "baby": (1, 4, 0.5, 0.3), "sports": (1, 4, 0.4, 0.6),
                "clothing": (2, 64, 0.2, 0.2)}
    for dataset, values in expected.items():
        config = Config("LGMRec", dataset, config_dict=run_config())
        assert tuple(config[key] for key in keys) == values, dataset
        assert "dataset_defaults" not in config.final_config_dict
    user_file = tmp_path / "mine.yaml"
    user_file.write_text("alpha: 0.9\n")
    config = Config("LGMRec", "sports", [str(user_file)], run_config(hyper_num=8))
    assert (config["alpha"], config["hyper_num"], config["keep_rate"]) == (0.9, 8, 0.4), "the user wins"
    monkeypatch.setattr(sys, "argv", ["run", "--keep_rate=0.7"])
    assert Config("LGMRec", "clothing", config_dict=run_config())["keep_rate"] == 0.7


@pytest.mark.parametrize("key, value, wanted", [
    ("keep_rate", 0.0, "a number in (0, 1]"),
    ("n_hyper_layer", 0, "an integer >= 1"),
    ("hyper_num", 0, "an integer >= 1"),
    ("alpha", -1, "a number >= 0"),
    ("lgmrec_eval_noise_quirk", "maybe", "True or False"),
])
def test_bad_values_are_config_errors(run_config, key, value, wanted):
    with pytest.raises(ConfigError) as error:
        Config("LGMRec", "synthetic", config_dict=run_config(**{key: value}))
    assert str(error.value) == f"{key} must be {wanted}, got {value!r}"


def test_trains_end_to_end_under_guider(tmp_path):
    run = train_each(tmp_path, ["LGMRec"], "synthetic", [os.path.join(REPO_ROOT, "properties", "guider.yaml")],
                     epochs=1, guider_teacher_pretrain_epochs=1, synthetic_generator={
                         "seed": 7, "n_users": 300, "n_items": 200, "mean_interactions": 12})["LGMRec"]
    assert 0.0 <= run["test_result"]["recall@20"] <= 1.0
    assert type(run["trainer"]).__name__ == "GUIDERTrainer"


@pytest.mark.parametrize("temperature", [0.2, 0.01])  # 0.01: logits up to 100, the max-shifted path
def test_table_info_nce_equals_cross_entropy_over_the_table_in_value_and_gradient(temperature):
    """The hand-written backward (no zero-filled target gradient) against autograd's cross-entropy
    of the cosine logits, with a table row that is the positive of several anchors."""
    from recbole_mm.model.loss import table_info_nce

    generator = torch.Generator().manual_seed(5)
    anchor = torch.randn(6, 4, generator=generator, requires_grad=True)
    table = torch.randn(9, 4, generator=generator, requires_grad=True)
    targets = torch.tensor([0, 3, 3, 8, 3, 1])
    logits = F.normalize(anchor, dim=1) @ F.normalize(table, dim=1).T / temperature
    reference = F.cross_entropy(logits, targets, reduction="sum")
    value = table_info_nce(anchor, table, targets, temperature)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    got = torch.autograd.grad(value, [anchor, table])
    want = torch.autograd.grad(reference, [anchor, table])
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))
