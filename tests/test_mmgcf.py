"""MMGCF: every fusion_mode x weighting against a dense rewrite of MMRec's formula (value and
gradient), one modality, the loss, the per-epoch degree-sensitive edge dropout, and the refusals."""
import pytest
import torch

from recbole_mm.errors import ConfigError
from recbole_mm.model.loss import install_denoising_loss
from recbole_mm.model.mmgcf import MMGCF
from tests.conftest import build_model, train_steps

FUSIONS = ["mean", "sum", "concat"]
WEIGHTINGS = ["equal", "alpha", "normalized"]


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), MMGCF)
    return config, loaders, model


def linear(layer, x):
    """A one-Linear MLP written out: x W^T + b."""
    return x @ layer[0].weight.T + layer[0].bias


def unit_rows(x):
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def dense_reference(model, adjacency):
    """MMRec's MMGCF written out on a dense adjacency: LightGCN (mean of layers 0..L), the
    projected features, then ``fuse_item_embeddings`` with its three weightings."""
    ego = torch.cat([model.user_embedding, model.item_id_embedding])
    layers = [ego]
    for _ in range(model.n_ui_layers):
        layers.append(adjacency @ layers[-1])
    nodes = sum(layers) / len(layers)
    users, items = nodes[:model.n_users], nodes[model.n_users:]
    feats = [linear(model.projections[name], model.modality_features[name]) for name in model.projections]

    def phi(tensors, layer):
        if model.fusion_mode == "mean":
            return sum(tensors) / len(tensors)
        if model.fusion_mode == "sum":
            return sum(tensors)
        return linear(layer, torch.cat(tensors, dim=1))

    if model.weighting == "alpha":
        a = torch.sigmoid(model.alpha_logit)
        return users, phi([items * a] + [f * (1 - a) for f in feats], model.id_fusion)
    if model.weighting == "normalized":
        return users, phi([unit_rows(items) * len(feats)] + [unit_rows(f) for f in feats], model.id_fusion)
    mm = phi(feats, model.modality_fusion) if len(feats) > 1 else feats[0]
    return users, phi([items, mm], model.id_fusion)


def assert_matches_dense(model):
    model.eval()
    adjacency = model.full_adjacency.to_dense()
    parameters = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(3)
    probe_u = torch.randn(model.n_users, model.embedding_size, generator=generator)
    probe_i = torch.randn(model.n_items, model.embedding_size, generator=generator)

    def objective(users, items):
        return (users * probe_u).sum() + (items * probe_i).sum()

    got = model.forward()
    want = dense_reference(model, adjacency)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.allclose(g, w, atol=1e-5)
    got_grads = torch.autograd.grad(objective(*got), parameters, allow_unused=True)
    want_grads = torch.autograd.grad(objective(*want), parameters, allow_unused=True)
    for parameter, g, w in zip(parameters, got_grads, want_grads):
        assert g is not None and w is not None, "every built parameter reaches the scores"
        assert torch.allclose(g, w, atol=1e-5), parameter.shape


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("fusion_mode", FUSIONS)
def test_forward_matches_mmrecs_formula_on_the_dense_graph(run_config, fusion_mode, weighting):
    width = 24 if fusion_mode == "concat" else 64  # concat takes any feat_embed_dim
    _, _, model = build(run_config, fusion_mode=fusion_mode, weighting=weighting, feat_embed_dim=width,
                        n_ui_layers=2)
    assert list(model.projections) == ["image", "text"]
    if weighting == "alpha":  # move the gate off 1/2 so that alpha and 1 - alpha differ
        model.alpha_logit.data.fill_(0.7)
    assert_matches_dense(model)


@pytest.mark.parametrize("fusion_mode", FUSIONS)
def test_one_modality_skips_the_modality_fusion(run_config, fusion_mode):
    _, _, model = build(run_config, modalities=["text"], fusion_mode=fusion_mode, weighting="equal")
    assert list(model.projections) == ["text"] and model.modality_fusion is None
    assert_matches_dense(model)


def test_weightings_and_fusions_give_different_items(run_config):
    """The options act: on the same parameters, each combination scores items differently."""
    items = {}
    for fusion_mode in FUSIONS:
        for weighting in WEIGHTINGS:
            _, _, model = build(run_config, fusion_mode=fusion_mode, weighting=weighting)
            model.eval()
            items[fusion_mode, weighting] = model.forward()[1].detach()
    keys = list(items)
    for index, first in enumerate(keys):
        for second in keys[index + 1:]:
            assert not torch.allclose(items[first], items[second], atol=1e-4), (first, second)


def test_only_the_layers_in_use_are_built(run_config):
    names = {}
    for fusion_mode, weighting in [("mean", "equal"), ("concat", "equal"), ("concat", "alpha"), ("sum", "normalized")]:
        _, _, model = build(run_config, fusion_mode=fusion_mode, weighting=weighting)
        names[fusion_mode, weighting] = {name.split(".")[0] for name, _ in model.named_parameters()}
    base = {"user_embedding", "item_id_embedding", "projections"}
    assert names["mean", "equal"] == base
    assert names["concat", "equal"] == base | {"modality_fusion", "id_fusion"}
    assert names["concat", "alpha"] == base | {"alpha_logit", "id_fusion"}
    assert names["sum", "normalized"] == base


def test_loss_is_mean_bpr_plus_reg_on_ego_rows(run_config):
    _, loaders, model = build(run_config, reg_weight=0.3, dropout=0.0)
    model.train()
    batch = next(iter(loaders[0]))
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    user_all, item_all = dense_reference(model, model.full_adjacency.to_dense())
    margin = (user_all[users] * item_all[pos]).sum(1) - (user_all[users] * item_all[neg]).sum(1)
    reg = (model.user_embedding[users].norm() ** 2 + model.item_id_embedding[pos].norm() ** 2
           + model.item_id_embedding[neg].norm() ** 2) / (2 * len(users))
    expected = -torch.nn.functional.logsigmoid(margin).mean() + 0.3 * reg
    assert torch.allclose(model.calculate_loss(batch), expected, rtol=1e-5)


def test_the_bpr_term_is_the_replaceable_bpr_loss(run_config):
    """``denoise: tce | rce | bod`` swap the model's BPRLoss module: the loss must go through it."""
    _, loaders, model = build(run_config, reg_weight=0.0)
    batch = next(iter(loaders[0]))

    class Constant(torch.nn.Module):
        def forward(self, pos, neg):
            return (pos - neg).sum() * 0 + 42.0

    install_denoising_loss(model, Constant())
    assert model.calculate_loss(batch).item() == 42.0


def test_loss_falls_on_a_fixed_batch(run_config):
    _, loaders, model = build(run_config)
    losses = train_steps(model, next(iter(loaders[0])), 30, lr=0.01, before_step=model.pre_epoch_processing)
    assert losses[-1] < 0.7 * losses[0]


def test_edge_dropout_resamples_each_epoch_and_evaluation_uses_the_full_graph(run_config):
    _, loaders, model = build(run_config, dropout=0.5)
    sampler = model.edge_sampler
    assert sampler is not None and sampler.n_keep == int(len(sampler.users) * 0.5)
    model.pre_epoch_processing()
    first = model.train_adjacency.to_dense()
    assert model.train_adjacency._nnz() == 2 * sampler.n_keep
    model.pre_epoch_processing()
    assert not torch.equal(first, model.train_adjacency.to_dense()), "a new draw each epoch"
    model.train()
    users, _ = model.forward()
    want_users, _ = dense_reference(model, model.train_adjacency.to_dense())
    assert torch.allclose(users, want_users, atol=1e-5), "training propagates on the pruned graph"
    model.eval()
    interaction = next(iter(loaders[1]))[0]
    batch_users = interaction[model.USER_ID]
    user_all, item_all = dense_reference(model, model.full_adjacency.to_dense())
    scores = model.full_sort_predict(interaction).view(len(batch_users), -1)
    assert torch.allclose(scores, user_all[batch_users] @ item_all.T, atol=1e-5)


def test_without_dropout_training_uses_the_full_graph(run_config):
    _, _, model = build(run_config, dropout=0.0)
    model.pre_epoch_processing()
    assert model.edge_sampler is None and model.train_adjacency is model.full_adjacency


def test_feat_embed_dim_follows_embedding_size_unless_given(run_config):
    _, _, model = build(run_config, embedding_size=16)
    assert all(layer[0].out_features == 16 for layer in model.projections.values())
    _, _, model = build(run_config, embedding_size=16, feat_embed_dim=8, fusion_mode="concat")
    assert all(layer[0].out_features == 8 for layer in model.projections.values())
    assert model.forward()[1].shape == (model.n_items, 16)


@pytest.mark.parametrize("fusion_mode", ["mean", "sum"])
def test_elementwise_fusion_with_other_widths_names_both_keys(run_config, fusion_mode):
    with pytest.raises(ConfigError, match=r"feat_embed_dim \(32\) must equal embedding_size \(64\)"):
        build(run_config, fusion_mode=fusion_mode, feat_embed_dim=32)


@pytest.mark.parametrize("key, value", [("fusion_mode", "prod"), ("weighting", "softmax")])
def test_unknown_options_are_refused_by_name(run_config, key, value):
    with pytest.raises(ConfigError, match=key):
        build(run_config, **{key: value})
