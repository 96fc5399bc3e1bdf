"""BOD (``denoise: bod``): the weight generator, its gradient-matching step, and BOD through the
trainer with the plugin's and RecBole's models."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from recbole.model.general_recommender.bpr import BPR
from recbole.model.general_recommender.lightgcn import LightGCN
from recbole.model.general_recommender.neumf import NeuMF
from recbole.model.loss import BPRLoss

from recbole_mm.model.clipmlp import CLIPMLP
from recbole_mm.model.freedom import FREEDOM
from recbole_mm.model.vbpr import VBPR
from recbole_mm.trainer import MultiModalTrainer
from recbole_mm.trainer.bod import (BOD, BOD_KEYS, WeightedBPRLoss, checked_bod_config,
                                    column_cosine_distance, gradient_matching_loss)
from tests.conftest import SMALL_SYNTHETIC, build_model, train_each

OVERALL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "recbole_mm", "properties", "overall.yaml")


def bod_defaults():
    with open(OVERALL) as handle:
        overall = yaml.safe_load(handle)
    return {key: overall[key] for key in BOD_KEYS}


class TinyMF(nn.Module):
    """Matrix factorisation with the interface BOD reads: ids, ``forward()``, a ``BPRLoss``."""

    USER_ID, ITEM_ID, NEG_ITEM_ID = "user_id", "item_id", "neg_item_id"

    def __init__(self, n_users, n_items, dim):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.user_embedding = nn.Parameter(0.1 * torch.randn(n_users, dim))
        self.item_embedding = nn.Parameter(0.1 * torch.randn(n_items, dim))
        self.mf_loss = BPRLoss()

    def forward(self):
        return self.user_embedding, self.item_embedding

    def calculate_loss(self, interaction):
        users = self.user_embedding[interaction[self.USER_ID]]
        pos = (users * self.item_embedding[interaction[self.ITEM_ID]]).sum(-1)
        neg = (users * self.item_embedding[interaction[self.NEG_ITEM_ID]]).sum(-1)
        return self.mf_loss(pos, neg)


def clustered_pairs(n_users=90, n_items=90, clusters=3, per_user=8, noise_share=0.2, seed=1):
    """Every user interacts with ``per_user`` items of its own cluster (user u and item i are in
    cluster u % clusters and i % clusters); ``noise_share`` x that many random cross-cluster
    pairs are added as injected noise. Returns (pairs (n x 2), injected (n,) bool)."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.arange(n_items)
    clean = []
    for user in range(n_users):  # building the fixture only
        own = items[items % clusters == user % clusters]
        clean.append(torch.stack([torch.full((per_user,), user),
                                  own[torch.randperm(len(own), generator=generator)[:per_user]]], 1))
    clean = torch.cat(clean)
    n_noise = int(noise_share * len(clean))
    candidates = torch.stack([torch.randint(n_users, (4 * n_noise,), generator=generator),
                              torch.randint(n_items, (4 * n_noise,), generator=generator)], 1)
    noise = candidates[candidates[:, 0] % clusters != candidates[:, 1] % clusters][:n_noise]
    injected = torch.cat([torch.zeros(len(clean), dtype=torch.bool), torch.ones(len(noise), dtype=torch.bool)])
    return torch.cat([clean, noise]), injected


def random_batch(pairs, n_items, size, generator):
    rows = torch.randint(len(pairs), (size,), generator=generator)
    return {"user_id": pairs[rows, 0], "item_id": pairs[rows, 1],
            "neg_item_id": torch.randint(n_items, (size,), generator=generator)}


def mean_weights(bod, pairs, injected):
    weights = bod.weights(pairs[:, 0], pairs[:, 1])
    return weights[~injected].mean().item(), weights[injected].mean().item()


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is as fast and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_generator_learns_to_weigh_injected_pairs_lower(one_thread):
    torch.manual_seed(0)
    pairs, injected = clustered_pairs()
    model = TinyMF(90, 90, 16)
    bod = BOD({**bod_defaults(), "device": "cpu", "bod_generator_lr": 0.002}, model)
    draws = torch.Generator().manual_seed(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):  # the recommender fits clean and noisy pairs alike (plain BPR: no weights set)
        optimizer.zero_grad()
        model.calculate_loss(random_batch(pairs, 90, 256, draws)).backward()
        optimizer.step()
    clean_0, noisy_0 = mean_weights(bod, pairs, injected)
    assert abs(clean_0 - noisy_0) < 0.005, "at initialisation the generator cannot tell them apart"
    losses = [bod.outer_step(random_batch(pairs, 90, 128, draws)) for _ in range(200)]
    clean_1, noisy_1 = mean_weights(bod, pairs, injected)
    assert noisy_1 < clean_1 - 0.008, (clean_0, noisy_0, clean_1, noisy_1)
    assert (clean_1 - noisy_1) > (clean_0 - noisy_0) + 0.008
    assert sum(losses[-50:]) < sum(losses[:50]), "the gradient-matching loss falls"


def test_outer_step_moves_the_generator_only():
    torch.manual_seed(0)
    pairs, _ = clustered_pairs()
    model = TinyMF(90, 90, 8)
    bod = BOD({**bod_defaults(), "device": "cpu"}, model)
    before_model = [p.detach().clone() for p in model.parameters()]
    before_gen = [p.detach().clone() for p in bod.generator.parameters()]
    bod.outer_step(random_batch(pairs, 90, 64, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert all(p.grad is None or not p.grad.abs().sum() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before_gen, bod.generator.parameters()))


def test_gradient_matching_loss_is_the_column_cosine_distance_of_the_two_gradients():
    torch.manual_seed(0)
    users, items = torch.randn(5, 4), torch.randn(6, 4)
    u, i, j = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 2, 3, 0]), torch.tensor([5, 4, 4, 1])
    bod = BOD({**bod_defaults(), "device": "cpu"}, TinyMF(5, 6, 4))
    # by hand, with the generator applied to the same (grad-carrying) representations
    U, I = users.clone().requires_grad_(True), items.clone().requires_grad_(True)
    pos_w, neg_w = bod.generator(U[u], I[i]), bod.generator(U[u], I[j])
    real = -F.logsigmoid(pos_w * (U[u] * I[i]).sum(-1) - neg_w * (U[u] * I[j]).sum(-1)).mean()
    syn = (pos_w * (F.normalize(U[u], dim=-1) - F.normalize(I[i], dim=-1)).pow(2).sum(-1)).mean()
    g_real = torch.autograd.grad(real, (U, I), retain_graph=True)
    g_syn = torch.autograd.grad(syn, (U, I))
    expected = 0.0
    for a, b in zip(g_real, g_syn):
        cosine = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0) + 1e-6)
        expected += (1 - cosine).sum()
    value = gradient_matching_loss(bod.generator, users, items, u, i, j)
    assert torch.allclose(value, expected, atol=1e-5)
    assert column_cosine_distance(torch.ones(3), torch.ones(3)) == 0, "1-D gradients are skipped"


def test_weighted_bpr_scales_the_scores_and_its_weights_carry_no_gradient():
    loss = WeightedBPRLoss()
    pos, neg = torch.tensor([2.0, -1.0, 0.5], requires_grad=True), torch.tensor([0.0, 1.0, 1.0])
    assert torch.allclose(loss(pos, neg), -F.logsigmoid(pos - neg).mean()), "no weights: plain BPR"
    pos_w, neg_w = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.5, 1.0, 0.0])
    loss.set_weights(pos_w, neg_w)
    value = loss(pos, neg)
    assert torch.allclose(value, -F.logsigmoid(pos_w * pos - neg_w * neg).mean())
    value.backward()
    assert pos.grad[1] == 0 and pos.grad[0] != 0, "a zero weight silences the row's positive"
    with pytest.raises(ValueError, match="weights the batch's rows"):
        loss(torch.zeros(4), torch.zeros(4))


def test_inner_loss_uses_the_generator_weights_without_training_the_generator():
    torch.manual_seed(0)
    pairs, _ = clustered_pairs()
    model = TinyMF(90, 90, 8)
    bod = BOD({**bod_defaults(), "device": "cpu"}, model)
    batch = random_batch(pairs, 90, 32, torch.Generator().manual_seed(3))
    seen = {}
    original = bod.loss.forward

    def spy(pos, neg):
        seen["pos"], seen["neg"] = bod.loss.pos_weight.clone(), bod.loss.neg_weight.clone()
        return original(pos, neg)

    bod.loss.forward = spy
    loss = bod.inner_loss(model.calculate_loss)(batch)
    assert torch.allclose(seen["pos"], bod.weights(batch["user_id"], batch["item_id"]))
    assert torch.allclose(seen["neg"], bod.weights(batch["user_id"], batch["neg_item_id"]))
    assert bod.loss.pos_weight is None, "weights cleared after the batch"
    loss.backward()
    assert all(p.grad is None for p in bod.generator.parameters())
    assert model.user_embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("model_class", [VBPR, FREEDOM, LightGCN, BPR])
def test_bod_trains_any_model_through_the_trainer(run_config, model_class):
    config, _, loaders, model = build_model(run_config(denoise="bod", noise_ratio=0.1), model_class)
    trainer = MultiModalTrainer(config, model)
    assert trainer.denoising_loss is None and isinstance(trainer.bod, BOD)
    assert not [m for m in model.modules() if isinstance(m, BPRLoss)], "every BPRLoss replaced"
    assert any(m is trainer.bod.loss for m in model.modules())
    assert trainer.bod.route == ("embeddings" if model_class is BPR else "forward")
    assert all(p.device.type == torch.device(config["device"]).type for p in trainer.bod.generator.parameters())
    generator = [p.detach().clone() for p in trainer.bod.generator.parameters()]
    recommender = [p.detach().clone() for p in model.parameters()]
    loss = trainer._train_epoch(loaders[0], 0)
    assert torch.isfinite(torch.as_tensor(loss)).all()
    assert trainer.bod.last_outer_loss is not None
    assert any(not torch.equal(a, b) for a, b in zip(generator, trainer.bod.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(recommender, model.parameters()))


def test_outer_rounds_follow_bod_outer_every(run_config):
    config, _, loaders, model = build_model(run_config(denoise="bod", bod_outer_every=2, bod_outer_steps=3), BPR)
    trainer = MultiModalTrainer(config, model)
    calls = []
    trainer.bod.outer_step = lambda batch: calls.append(len(batch)) or 0.0
    for epoch in range(4):
        trainer._train_epoch(loaders[0], epoch)
    assert len(calls) == 6, "3 steps after epochs 1 and 3"


def test_bod_end_to_end_with_vbpr_and_recbole_bpr(tmp_path, monkeypatch):
    """One epoch under denoise: bod, with spies: every training batch's BPR is weighted by the
    generator (weights set, not all equal), the generator takes its outer step after the epoch,
    and it ends with other weights than it started with."""
    seen = {"weighted": [], "unweighted": 0, "outer": 0, "generators": []}
    forward, outer_step, init = WeightedBPRLoss.forward, BOD.outer_step, BOD.__init__

    def spied_forward(self, pos_score, neg_score):
        if self.pos_weight is None:
            seen["unweighted"] += 1
        else:
            seen["weighted"].append(float(torch.cat([self.pos_weight, self.neg_weight]).std()))
        return forward(self, pos_score, neg_score)

    def spied_outer_step(self, interaction):
        seen["outer"] += 1
        return outer_step(self, interaction)

    def spied_init(self, config, model):
        init(self, config, model)
        seen["generators"].append([p.detach().clone() for p in self.generator.parameters()])

    monkeypatch.setattr(WeightedBPRLoss, "forward", spied_forward)
    monkeypatch.setattr(BOD, "outer_step", spied_outer_step)
    monkeypatch.setattr(BOD, "__init__", spied_init)
    runs = train_each(tmp_path, ["VBPR", "BPR"], "synthetic", epochs=1, noise_ratio=0.1, denoise="bod",
                      synthetic_generator=dict(SMALL_SYNTHETIC))
    assert len(seen["generators"]) == 2, "one BOD per run"
    for name, initial in zip(("VBPR", "BPR"), seen["generators"]):
        assert 0.0 <= runs[name]["test_result"]["recall@20"] <= 1.0
        bod = runs[name]["trainer"].bod
        assert bod.last_outer_loss is not None
        assert any(not torch.equal(a, b) for a, b in zip(initial, bod.generator.parameters())), name
    assert seen["unweighted"] == 0, "no training batch's BPR ran without the generator's weights"
    assert len(seen["weighted"]) >= 2 and all(spread > 0 for spread in seen["weighted"])
    assert seen["outer"] == 2, "bod_outer_steps 1 after the epoch, for each model"


@pytest.mark.parametrize("model_class, reason", [
    (NeuMF, "NeuMF's user and item representations"),  # forward(user, item) returns scores
    (CLIPMLP, r"CLIPMLP.forward\(\), which gave \[\(\d+, \d+\)\]"),  # items only: no user vectors
])
def test_models_without_user_and_item_vectors_raise_a_clear_error(run_config, model_class, reason):
    config, _, _, model = build_model(run_config(denoise="bod"), model_class)
    with pytest.raises(ValueError, match=reason):
        MultiModalTrainer(config, model)


@pytest.mark.parametrize("key, value", [
    ("bod_generator_lr", 0), ("bod_generator_lr", -0.1), ("bod_generator_lr", "fast"),
    ("bod_hidden", 0), ("bod_hidden", 2.5), ("bod_hidden", True),
    ("bod_outer_steps", -1), ("bod_outer_every", 0), ("bod_outer_every", None),
    ("bod_alignment_weight", -1.0), ("bod_uniformity_weight", float("nan")),
])
def test_bad_bod_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"^{key} must be"):
        checked_bod_config({**bod_defaults(), key: value})


def test_bad_bod_value_through_the_trainer(run_config):
    config, _, _, model = build_model(run_config(denoise="bod", bod_outer_every=0), BPR)
    with pytest.raises(ValueError, match="bod_outer_every must be an integer >= 1"):
        MultiModalTrainer(config, model)
    checked_bod_config(bod_defaults())  # the packaged defaults pass


def test_properties_file_selects_bod_and_its_grid(run_config):
    from recbole_mm.config import Config
    from recbole_mm.quick_start import grid_configs
    from tests.conftest import REPO_ROOT

    config = Config("VBPR", "synthetic", [os.path.join(REPO_ROOT, "properties", "denoise_bod.yaml")], run_config())
    assert config["denoise"] == "bod"
    grid = list(grid_configs(config["hyper_parameters"]))
    assert len(grid) == 6 and {g["bod_generator_lr"] for g in grid} == {0.0001, 0.001, 0.01}
