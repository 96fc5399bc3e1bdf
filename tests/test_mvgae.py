"""MVGAE: product-of-experts fusion and KL against MMRec's formulas, the experts' graph encoder,
the loss, deterministic evaluation, the switches, bad config."""
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_mm.errors import ConfigError
from recbole_mm.model.mvgae import MVGAE, kl_divergence, product_of_experts
from tests.conftest import build_model, check_frozen_tables, check_stale_eval_quirk, train_steps


def build(run_config, **overrides):
    return build_model(run_config(**overrides), MVGAE)


def first_batch(loaders):
    return next(iter(loaders[0]))


# ---------------------------------------------------------------- MMRec's formulas, written densely
def reference_poe(mu, logvar, eps=1e-8):
    """MMRec's ProductOfExperts.forward, as written there."""
    var = torch.exp(logvar) + eps
    T = 1.0 / var
    pd_mu = torch.sum(mu * T, dim=0) / torch.sum(T, dim=0)
    pd_var = 1.0 / torch.sum(T, dim=0)
    return pd_mu, torch.log(pd_var)


def reference_fusion(experts):
    """MMRec's two products: the modalities first, then that with the collaborative expert."""
    modal = reference_poe(torch.stack([m for m, _ in experts[:-1]]), torch.stack([v for _, v in experts[:-1]]))
    return reference_poe(torch.stack([modal[0], experts[-1][0]]), torch.stack([modal[1], experts[-1][1]]))


def reference_kl(mu, logvar):
    logvar = logvar.clamp(max=10)
    return -0.5 * torch.mean(torch.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1))


def reference_recon(z, users, pos_nodes, neg_nodes):
    """MMRec's recon_loss on an already-squashed z: every user against every negative of the batch
    ((B x B x d) broadcast, as dot_product_decode_neg does), the hardest kept."""
    pos = torch.sigmoid(torch.sum(z[users] * z[pos_nodes], dim=1))
    re_users = users.unsqueeze(1).repeat(1, neg_nodes.size(0))
    neg = torch.sigmoid(torch.max(torch.sum(z[re_users] * z[neg_nodes], -1), dim=-1).values)
    return -torch.sum(torch.log2(torch.sigmoid(pos - neg)))


def dense_mean_adjacency(model):
    """D^{-1}(A + I) of the bidirectional train graph, by explicit loops."""
    n = model.n_users + model.n_items
    dense = torch.eye(n)
    coo = model.interaction_matrix
    for u, i in zip(coo.row, coo.col):
        dense[u, model.n_users + i] = dense[model.n_users + i, u] = 1.0
    return dense / dense.sum(1, keepdim=True)


def reference_expert(encoder, adjacency, item_input):
    """MMRec's GCN.forward (concate False, eval mode) with a dense adjacency."""
    def conv(module, x):
        return F.normalize(adjacency @ (x @ module.weight) + module.bias, dim=-1)

    def linear(module, x):
        return x @ module.weight.T + module.bias

    x = F.normalize(torch.cat([encoder.preference, linear(encoder.projection, item_input)]), dim=1)
    for layer_conv, combine in zip(encoder.convs, encoder.combines):
        x = F.leaky_relu(linear(combine, F.leaky_relu(conv(layer_conv, x))))
    heads = []
    for head in (encoder.mu_head, encoder.logvar_head):
        heads.append(linear(head.combine, F.leaky_relu(conv(head.conv, x))) + F.leaky_relu(linear(head.self_linear, x)))
    return tuple(heads)


# ---------------------------------------------------------------- tests
def test_product_of_experts_and_kl_match_mmrec_in_value_and_gradient():
    generator = torch.Generator().manual_seed(0)
    mus = [torch.randn(50, 8, generator=generator, dtype=torch.float64) for _ in range(3)]
    logvars = [torch.randn(50, 8, generator=generator, dtype=torch.float64) * 3 for _ in range(3)]
    logvars[2][0, :4] = 12.0  # above MMRec's clamp (10), which the KL applies and the product does not
    leaves = [t.requires_grad_(True) for t in mus + logvars]
    weights = torch.randn(3, 50, 8, generator=generator, dtype=torch.float64)

    def objective(poe):
        modal = poe(torch.stack(mus[:2]), torch.stack(logvars[:2]))
        mu, logvar = poe(torch.stack([modal[0], mus[2]]), torch.stack([modal[1], logvars[2]]))
        return mu, logvar

    ours = objective(product_of_experts)
    expected = objective(reference_poe)
    assert torch.allclose(ours[0], expected[0], rtol=1e-10) and torch.allclose(ours[1], expected[1], rtol=1e-10)
    ours_kl, expected_kl = kl_divergence(*ours), reference_kl(*expected)
    assert torch.allclose(ours_kl, expected_kl, rtol=1e-10)
    experts_kl, expected_experts_kl = kl_divergence(mus[2], logvars[2]), reference_kl(mus[2], logvars[2])
    assert torch.allclose(experts_kl, expected_experts_kl, rtol=1e-10)
    # the clamp matters for this expert: without it the KL differs
    assert not torch.allclose(experts_kl, -0.5 * (1 + logvars[2] - mus[2] ** 2 - logvars[2].exp()).sum(1).mean())

    def gradients(outputs, kl, expert_kl):
        scalar = (weights[0] * outputs[0]).sum() + (weights[1] * outputs[1]).sum() + 3 * kl + 0.5 * expert_kl
        return torch.autograd.grad(scalar, leaves)

    for got, want in zip(gradients(ours, ours_kl, experts_kl), gradients(expected, expected_kl, expected_experts_kl)):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-12)


def test_product_of_experts_is_precision_weighted():
    """A sanity property on top of the formula: equal variances average the means, and the product's
    variance is the inverse of the summed precisions (smaller than each expert's)."""
    mu = torch.tensor([[[1.0]], [[3.0]]])
    logvar = torch.log(torch.tensor([[[1.0]], [[1.0]]]))
    fused_mu, fused_logvar = product_of_experts(mu, logvar)
    assert torch.allclose(fused_mu, torch.tensor([[2.0]])) and torch.allclose(fused_logvar.exp(), torch.tensor([[0.5]]))
    fused_mu, _ = product_of_experts(mu, torch.log(torch.tensor([[[1.0]], [[3.0]]])))
    assert torch.allclose(fused_mu, torch.tensor([[1.5]]))  # (1 * 1 + 3 / 3) / (1 + 1/3)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_experts_and_fusion_follow_mmrec_equations(run_config, n_layers):
    _, _, _, model = build(run_config, n_layers=n_layers)
    model.eval()
    assert list(model.modality_encoders) == ["image", "text"]
    assert len(model.collaborative_encoder.convs) == len(model.collaborative_encoder.combines) == n_layers
    adjacency = dense_mean_adjacency(model)
    with torch.no_grad():
        (mu, logvar), experts = model.encode()
        inputs = [model.modality_features["image"], model.modality_features["text"], model.collaborative]
        encoders = [model.modality_encoders["image"], model.modality_encoders["text"], model.collaborative_encoder]
        expected_experts = [reference_expert(enc, adjacency, x) for enc, x in zip(encoders, inputs)]
        for got, want in zip(experts, expected_experts):
            assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
        expected_mu, expected_logvar = reference_fusion(expected_experts)
        assert torch.allclose(mu, expected_mu, atol=1e-5) and torch.allclose(logvar, expected_logvar, atol=1e-5)
        users, items = model.forward()
        assert torch.allclose(torch.cat([users, items]), torch.sigmoid(expected_mu), atol=1e-6)


@pytest.mark.parametrize("sigmoid_latent", [True, False])
@pytest.mark.parametrize("offset_quirk", [False, True])
def test_loss_is_mmrecs_reconstruction_plus_beta_kl(run_config, sigmoid_latent, offset_quirk):
    """Evaluation mode (no draws, no dropout): the sum over the fused Gaussian and each expert's of
    MMRec's reconstruction term on z = sigmoid(mu) (or mu) plus beta KL. The item-offset switch changes
    only which rows the loss reads: item rows U + i (fixed) or MMRec's raw ids, i.e. user rows."""
    _, _, loaders, model = build(run_config, train_batch_size=128, beta=0.3, sigmoid_latent=sigmoid_latent,
                                 mvgae_item_offset_quirk=offset_quirk)
    batch = first_batch(loaders)
    model.eval()
    loss = model.calculate_loss(batch)
    fused, experts = model.encode()
    offset = 0 if offset_quirk else model.n_users
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID] + offset, batch[model.NEG_ITEM_ID] + offset
    expected = 0.0
    for mu, logvar in [fused] + experts:
        z = torch.sigmoid(mu) if sigmoid_latent else mu
        expected = expected + reference_recon(z, users, pos, neg) + 0.3 * reference_kl(mu, logvar)
    assert torch.allclose(loss, expected, rtol=1e-5)
    parameters = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, parameters, allow_unused=True)
    want = torch.autograd.grad(expected, parameters, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)


def test_item_offset_switch_changes_the_loss_only(run_config):
    losses, scores = {}, {}
    for quirk in (False, True):
        _, _, loaders, model = build(run_config, sigmoid_latent=False, mvgae_item_offset_quirk=quirk)
        model.eval()
        losses[quirk] = model.calculate_loss(first_batch(loaders)).item()
        scores[quirk] = torch.cat(model.forward())
    assert torch.equal(scores[False], scores[True])
    assert losses[False] != pytest.approx(losses[True], rel=1e-4)


def test_training_samples_with_a_tenth_of_sigma_and_evaluation_uses_the_means(run_config):
    _, _, _, model = build(run_config)
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4) * 4 + 8  # some above the clamp at 10
    model.train()
    torch.manual_seed(3)
    draw = model.reparameterise(mu, logvar)
    torch.manual_seed(3)
    expected = mu + torch.randn_like(logvar) * 0.1 * torch.exp(logvar.clamp(max=10).mul(0.5))
    assert torch.allclose(draw, expected)
    model.eval()
    assert torch.equal(model.reparameterise(mu, logvar), mu)


def test_evaluation_is_deterministic_and_computed_once(run_config):
    _, _, loaders, model = build(run_config)
    batch = first_batch(loaders)
    model.train()
    assert not torch.equal(model.calculate_loss(batch), model.calculate_loss(batch)), "training draws"
    assert not torch.equal(torch.cat(model.forward()), torch.cat(model.forward())), "training drops out"
    model.eval()
    calls = []
    encode = model.encode
    model.encode = lambda: calls.append(1) or encode()
    users = torch.arange(1, 40)
    first = model.full_sort_predict({model.USER_ID: users})
    second = model.full_sort_predict({model.USER_ID: users})
    assert torch.equal(first, second) and len(calls) == 1, "one forward per evaluation"
    model.train()
    model.eval()
    third = model.full_sort_predict({model.USER_ID: users})
    assert torch.equal(first, third) and len(calls) == 2
    with torch.no_grad():
        (mu, _), _ = encode()
    nodes = torch.sigmoid(mu)
    expected = nodes[users] @ nodes[model.n_users:].T
    assert torch.allclose(first, expected.reshape(-1), atol=1e-6)


def test_stale_eval_quirk_ranks_with_the_last_training_forward(run_config):
    """True: evaluation scores with the sigmoid means of the last training forward, before its
    update (MMRec's result_embed); False: a fresh forward. Training is the same either way
    (dropout off here, so that the training forward's means are reproducible)."""
    check_stale_eval_quirk(lambda **config: build(run_config, **config), "mvgae_stale_eval_quirk", dropout_rate=0.0)


def test_sigmoid_latent_switch_scores_raw_means(run_config):
    outputs = {}
    for flag in (True, False):
        _, _, _, model = build(run_config, sigmoid_latent=flag)
        model.eval()
        with torch.no_grad():
            (mu, _), _ = model.encode()
            outputs[flag] = (torch.cat(model.forward()), mu)
    assert torch.allclose(outputs[True][0], torch.sigmoid(outputs[True][1]))
    assert torch.equal(outputs[False][0], outputs[False][1])
    assert torch.equal(outputs[True][1], outputs[False][1]), "the encoders are the same"


@pytest.mark.parametrize("quirk", [False, True])
def test_frozen_quirk_keeps_preferences_and_collaborative_table_at_init(run_config, quirk):
    _, _, loaders, model = build(run_config, mvgae_frozen_quirk=quirk, sigmoid_latent=False)
    tables = {"collaborative": model.collaborative,
              "collaborative_encoder.preference": model.collaborative_encoder.preference}
    tables.update({f"{name}.preference": enc.preference for name, enc in model.modality_encoders.items()})
    check_frozen_tables(model, tables, quirk, first_batch(loaders), model.modality_encoders["image"].projection.weight,
                        lr=1e-2)


def test_loss_falls_on_a_fixed_batch(run_config):
    """Off the sigmoid plateau (see below): the loss's floor is -log2 sigmoid(1) = 0.45 per example and
    Gaussian, against 1 at the start, so a few percent is a real fall."""
    _, _, loaders, model = build(run_config, sigmoid_latent=False)
    losses = train_steps(model, first_batch(loaders), 20, lr=1e-3)
    assert losses[-1] < 0.97 * losses[0] and losses[-1] < min(losses[:10]), losses


def test_default_loss_saturates_as_mmrecs(run_config):
    """At MMRec's defaults (sigmoid of z, then of the dot products of d sigmoids, ~d/4) the
    reconstruction term sits at its plateau, 1 per example and Gaussian: the loss is 4 B + beta KL."""
    _, _, loaders, model = build(run_config, beta=0.0)
    batch = first_batch(loaders)
    model.eval()
    assert model.calculate_loss(batch).item() == pytest.approx(4 * len(batch), rel=1e-4)


def test_bad_config_is_refused(run_config):
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        build(run_config, n_layers=0)
    with pytest.raises(ConfigError, match="beta must be"):
        build(run_config, beta=-1.0)
    with pytest.raises(ConfigError, match="mvgae_item_offset_quirk must be"):
        build(run_config, mvgae_item_offset_quirk="sometimes")
    with pytest.raises(ConfigError, match="sigmoid_latent must be"):
        build(run_config, sigmoid_latent=3)


def test_initialisation_follows_mmrec(run_config):
    """Xavier-normal tables, projections, conv weights, heads and first combining layer; the conv
    biases uniform in +-1/sqrt(fan-in) (PyG); later combining layers at PyTorch's default."""
    torch.manual_seed(0)
    _, _, _, model = build(run_config, n_layers=2)

    def xavier_normal(tensor):
        fan_a, fan_b = tensor.shape
        return abs(tensor.std().item() / math.sqrt(2.0 / (fan_a + fan_b)) - 1) < 0.15

    def uniform(tensor, fan_in):
        bound = fan_in ** -0.5
        return tensor.abs().max().item() <= bound and abs(tensor.std().item() / (bound / 3 ** 0.5) - 1) < 0.2

    assert xavier_normal(model.collaborative)
    for encoder in [*model.modality_encoders.values(), model.collaborative_encoder]:
        assert xavier_normal(encoder.preference) and xavier_normal(encoder.projection.weight)
        assert xavier_normal(encoder.combines[0].weight) and not xavier_normal(encoder.combines[1].weight)
        assert uniform(encoder.combines[1].weight, encoder.combines[1].in_features)
        for conv in [*encoder.convs, encoder.mu_head.conv, encoder.logvar_head.conv]:
            assert xavier_normal(conv.weight) and uniform(conv.bias, conv.weight.shape[0])
        for head in (encoder.mu_head, encoder.logvar_head):
            assert xavier_normal(head.combine.weight) and xavier_normal(head.self_linear.weight)
