"""MMGCN: the layer equations, n_layers, the concat flag, the frozen-tables quirk, accuracy."""
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.data.graphs import mean_adjacency
from recbole_mm.model.mmgcn import MMGCN
from tests.conftest import build_model, check_frozen_tables, train_each, train_steps


def build(run_config, **overrides):
    return build_model(run_config(**overrides), MMGCN)


def first_batch(loaders):
    return next(iter(loaders[0]))


def test_mean_adjacency_averages_in_neighbours():
    sources = torch.tensor([0, 0, 1, 2, 3])
    targets = torch.tensor([2, 3, 2, 0, 0])
    x = torch.tensor([[1.0], [3.0], [5.0], [7.0], [9.0]])
    out = torch.sparse.mm(mean_adjacency(sources, targets, 5), x)
    assert torch.equal(out, torch.tensor([[6.0], [0.0], [2.0], [1.0], [0.0]]))


def reference_branch(model, name, n_layers):
    """The branch recomputed from its equations with a dense adjacency and explicit loops."""
    branch = model.branches[name]
    n_nodes = model.n_users + model.n_items
    dense = torch.zeros(n_nodes, n_nodes)
    coo = model.interaction_matrix
    for u, i in zip(coo.row, coo.col):
        dense[u, model.n_users + i] = dense[model.n_users + i, u] = 1.0
    mean = dense / dense.sum(1, keepdim=True).clamp_min(1)
    features = model.modality_features[name]
    if branch.projection is not None:
        features = features @ branch.projection.weight.T + branch.projection.bias
    x = F.normalize(torch.cat([branch.preference, features]), dim=1)
    for layer in range(n_layers):
        h = F.leaky_relu(mean @ (x @ branch.conv_weights[layer]))
        x_hat = F.leaky_relu(x @ branch.self_linears[layer].weight.T + branch.self_linears[layer].bias)
        x_hat = x_hat + model.id_embedding
        combine = branch.combines[layer]
        x = F.leaky_relu(torch.cat([h, x_hat], 1) @ combine.weight.T + combine.bias) if model.concat \
            else F.leaky_relu(h @ combine.weight.T + combine.bias + x_hat)
    return x


@pytest.mark.parametrize("concat", [True, False])
def test_forward_is_the_mean_of_the_branch_equations(run_config, concat):
    _, _, _, model = build(run_config, concat=concat)
    assert list(model.branches) == ["image", "text"]
    assert model.branches["image"].projection.out_features == 256 and model.branches["text"].projection is None
    with torch.no_grad():
        users, items = model.forward()
        expected = (reference_branch(model, "image", 3) + reference_branch(model, "text", 3)) / 2
    assert torch.allclose(torch.cat([users, items]), expected, atol=1e-5)
    width = 256 + 64 if concat else 256
    assert model.branches["image"].combines[0].in_features == width


def test_n_layers_is_honoured(run_config):
    outputs = {}
    for n_layers in (1, 2, 4):
        _, _, _, model = build(run_config, n_layers=n_layers)
        for branch in model.branches.values():
            assert len(branch.conv_weights) == len(branch.self_linears) == len(branch.combines) == n_layers
        with torch.no_grad():
            outputs[n_layers] = torch.cat(model.forward())
            expected = (reference_branch(model, "image", n_layers) + reference_branch(model, "text", n_layers)) / 2
        assert torch.allclose(outputs[n_layers], expected, atol=1e-5)
    assert not torch.allclose(outputs[1], outputs[2]) and not torch.allclose(outputs[2], outputs[4])
    with pytest.raises(ValueError, match="n_layers"):
        build(run_config, n_layers=0)


def test_concat_must_be_a_boolean_and_latent_dims_must_name_used_modalities(run_config):
    # (RecBole turns the strings 'True' / 'False' into booleans; others stay strings)
    with pytest.raises(ValueError, match="concat must be True or False, got 'no'"):
        build(run_config, concat="no")
    with pytest.raises(ValueError, match=r"modality_latent_dim names modalities \['audio'\]"):
        build(run_config, modality_latent_dim={"audio": 8})


def test_loss_is_bpr_plus_id_and_image_preference_l2(run_config):
    _, _, loaders, model = build(run_config, reg_weight=0.5)
    batch = first_batch(loaders)
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    user_all, item_all = model.forward()
    diff = (user_all[users] * (item_all[pos] - item_all[neg])).sum(-1)
    ids = model.id_embedding
    items = torch.stack([pos, neg], 1).view(-1) + model.n_users
    reg = (ids[users.repeat_interleave(2)] ** 2 + ids[items] ** 2).mean()  # MMRec's form
    reg = reg + (model.branches["image"].preference ** 2).mean()
    expected = -torch.log(torch.sigmoid(diff)).mean() + 0.5 * reg
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, _, loaders, model = build(run_config)
    losses = train_steps(model, first_batch(loaders), 20)
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("quirk", [False, True])
def test_frozen_quirk_keeps_id_embeddings_and_preferences_at_init(run_config, quirk):
    _, _, loaders, model = build(run_config, mmgcn_frozen_quirk=quirk, reg_weight=0.01)
    tables = {"id_embedding": model.id_embedding}
    tables.update({f"{name}.preference": branch.preference for name, branch in model.branches.items()})
    check_frozen_tables(model, tables, quirk, first_batch(loaders), model.branches["image"].projection.weight)


def test_initialisation_follows_mmrec(run_config):
    """MMRec's scales: Xavier-normal ID embeddings, preferences, conv weights, self-linears and
    first combining layer; PyTorch's default uniform (bound 1/sqrt(fan_in)) for the feature
    projection and the later combining layers (MMRec never re-initialises those)."""
    torch.manual_seed(0)
    _, _, _, model = build(run_config)

    def xavier_normal(tensor):
        fan_out, fan_in = tensor.shape
        return abs(tensor.std().item() / (2.0 / (fan_in + fan_out)) ** 0.5 - 1) < 0.1

    def default_uniform(tensor):
        bound = tensor.shape[1] ** -0.5
        return tensor.abs().max().item() <= bound and abs(tensor.std().item() / (bound / 3 ** 0.5) - 1) < 0.1

    assert xavier_normal(model.id_embedding)
    for name, branch in model.branches.items():
        assert xavier_normal(branch.preference), name
        for layer in range(model.n_layers):
            assert xavier_normal(branch.conv_weights[layer]), (name, layer)
            assert xavier_normal(branch.self_linears[layer].weight), (name, layer)
            combine = branch.combines[layer].weight
            assert (xavier_normal if layer == 0 else default_uniform)(combine), (name, layer)
            assert not (default_uniform if layer == 0 else xavier_normal)(combine), (name, layer)
    assert default_uniform(model.branches["image"].projection.weight)


def test_mmgcn_beats_popularity(tmp_path):
    runs = train_each(tmp_path, ["MMGCN", "Pop"], "synthetic", epochs=3)
    valid = {name: run["best_valid_result"]["recall@20"] for name, run in runs.items()}
    assert valid["MMGCN"] > valid["Pop"] + 0.01, valid
