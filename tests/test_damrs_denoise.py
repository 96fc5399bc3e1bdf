"""``denoise: damrs`` (DA-MRS's preference-guided BPR for any model): the weights against DAMRS's
``feedback_weights`` on dense views of the student's own vectors, the loss module against a dense
rewrite (value and gradient), that the option changes the BPR loss and nothing else, the
refusals, and one CLI epoch each for VBPR, FREEDOM and RecBole's LightGCN."""
from contextlib import nullcontext

import pytest
import torch
from recbole.model.general_recommender.bpr import BPR
from recbole.model.general_recommender.lightgcn import LightGCN
from recbole.model.general_recommender.neumf import NeuMF
from recbole.model.loss import BPRLoss

import run_recbole_mm as cli
from recbole_mm.config import Config
from recbole_mm.errors import ConfigError
from recbole_mm.model.bm3 import BM3
from recbole_mm.model.clipmlp import CLIPMLP
from recbole_mm.model.damrs import feedback_weights
from recbole_mm.model.freedom import FREEDOM
from recbole_mm.model.itemknncbf import ItemKNNCBF
from recbole_mm.model.loss import PreferenceWeightedBPRLoss
from recbole_mm.model.vbpr import VBPR
from recbole_mm.trainer import MultiModalTrainer
from recbole_mm.trainer.damrs_denoise import DAMRSDenoiser
from recbole_mm.utils import available_models, get_model
from tests.conftest import build_model
from tests.test_one_modality import one_modality_config


def denoised(run_config, model_class, **overrides):
    """(config, train loader, model, trainer) under ``denoise: damrs``, item graphs built."""
    config, _, loaders, model = build_model(run_config(denoise="damrs", **overrides), model_class)
    trainer = MultiModalTrainer(config, model)
    trainer.damrs.setup(loaders[0]._dataset)
    return config, loaders[0], model, trainer


def spy_weights(monkeypatch):
    """Every weight pair the loss module applies, as it applies it."""
    seen = []
    forward = PreferenceWeightedBPRLoss.forward

    def spied(self, pos_score, neg_score):
        result = forward(self, pos_score, neg_score)
        seen.append((self.pos_weight, self.neg_weight))
        return result

    monkeypatch.setattr(PreferenceWeightedBPRLoss, "forward", spied)
    return seen


# ---------------------------------------------------------------- the weights
@pytest.mark.parametrize("model_class, layers", [(BPR, 1), (LightGCN, 2)])
def test_weights_are_damrs_feedback_weights_of_dense_views_of_the_students_vectors(run_config, monkeypatch,
                                                                                 model_class, layers):
    """RecBole's BPR (MF: its embedding tables, read by get_*_embedding) and LightGCN (its
    forward(), observed inside its own calculate_loss): h_m = G_m^L items with dense graphs."""
    _, train, model, trainer = denoised(run_config, model_class, damrs_mm_layers=layers)
    batch = next(iter(train))
    users, pos, neg = batch["user_id"], batch["item_id"], batch["neg_item_id"]
    model.train()
    with torch.no_grad():
        if model_class is BPR:
            user_all, item_all = model.user_embedding.weight, model.item_embedding.weight
        else:
            user_all, item_all = model.forward()
        views = []
        for name in ("text", "image", "behaviour"):
            graph = trainer.damrs.graphs[name].to_dense()
            views.append(torch.linalg.matrix_power(graph, layers) @ item_all)
        views = torch.stack(views)
        expected = feedback_weights(user_all[users], views[:, pos], views[:, neg])
    seen = spy_weights(monkeypatch)
    loss = trainer.damrs.loss_function(model.calculate_loss)(batch)
    (pos_weight, neg_weight), = seen
    assert torch.allclose(pos_weight, expected[0], atol=1e-5) and torch.allclose(neg_weight, expected[1], atol=1e-5)
    assert pos_weight.std() > 0, "weights that tell the rows apart"
    assert not pos_weight.requires_grad and not neg_weight.requires_grad, "no gradient through the weights"
    loss.backward()
    assert trainer.damrs.loss.pos_weight is None and trainer.damrs.loss.pending is None, "cleared after the batch"


def test_one_forward_per_batch_for_a_student_whose_loss_calls_forward(run_config, monkeypatch):
    _, train, model, trainer = denoised(run_config, LightGCN)
    calls = []
    forward = LightGCN.forward
    monkeypatch.setattr(LightGCN, "forward", lambda self, *a: calls.append(a) or forward(self, *a))
    model.train()
    trainer.damrs.loss_function(model.calculate_loss)(next(iter(train))).backward()
    assert calls == [()], "the weights come from the forward the model's loss made"


# ---------------------------------------------------------------- the loss module
def test_loss_module_value_and_gradient_against_a_dense_rewrite():
    pos = torch.tensor([2.0, -1.0, 0.5, 0.0], requires_grad=True)
    neg = torch.tensor([0.0, 1.0, 1.0, -3.0], requires_grad=True)
    pos_w = torch.tensor([1.0, 0.2, 0.5, 0.0], requires_grad=True)
    neg_w = torch.tensor([0.0, 0.7, 0.0, 1.0])
    loss = PreferenceWeightedBPRLoss()
    loss.set_weights(pos_w, neg_w)
    value = loss(pos, neg)
    margin = (pos - neg).detach()
    sig = 1 / (1 + torch.exp(-margin))
    expected = -(pos_w.detach() * torch.log(sig) + neg_w * torch.log(1 - sig)).sum() / 4
    assert torch.allclose(value, expected)
    value.backward()
    d_margin = -(pos_w.detach() * (1 - sig) - neg_w * sig) / 4
    assert torch.allclose(pos.grad, d_margin) and torch.allclose(neg.grad, -d_margin)
    assert pos_w.grad is None, "the weights are constants of the loss"
    loss.set_weights()
    plain = loss(pos, neg)
    assert torch.allclose(plain, BPRLoss()(pos, neg), atol=1e-6), "no weights: plain BPR"
    loss.set_weights(pos_w, neg_w)
    with pytest.raises(ValueError, match="weighs the batch's rows"):
        loss(torch.zeros(3), torch.zeros(3))


def test_deferred_weights_are_computed_once_and_used_by_every_bpr_call_of_the_batch():
    calls = []
    weights = (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    loss = PreferenceWeightedBPRLoss()
    loss.set_weights(lambda: calls.append(1) or weights)
    pos, neg = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    first, second = loss(pos, neg), loss(2 * pos, neg)  # FREEDOM: ID, then modality scores
    assert calls == [1]
    margin = torch.tensor([1.0, 2.0])
    assert torch.allclose(first, -(torch.nn.functional.logsigmoid(torch.tensor(1.0)) +
                                   torch.nn.functional.logsigmoid(torch.tensor(-1.0))) / 2)
    assert torch.allclose(second, -(torch.nn.functional.logsigmoid(margin[1]) +
                                    torch.nn.functional.logsigmoid(-margin[1])) / 2)


# ---------------------------------------------------------------- it changes the loss only
@pytest.mark.parametrize("model_class", [VBPR, LightGCN, FREEDOM])
def test_with_unit_positive_and_zero_negative_weights_one_step_is_plain_bpr(run_config, monkeypatch, model_class):
    """The same model trained one SGD step on one batch, plain and under denoise: damrs with
    (w+, w-) forced to (1, 0): the same loss, the same parameters after the step; with its own
    weights the loss differs (so the option does reach it). (SGD: Adam's first step is
    g / (|g| + 1e-8), which turns the rounding of a ~1e-9 gradient, log(σ) here and
    log(1e-10 + σ) in RecBole's BPRLoss, into a visible difference.)"""
    def one_step(denoise, forced):
        overrides = {"denoise": denoise} if denoise else {}
        config, _, loaders, model = build_model(run_config(**overrides), model_class)
        trainer = MultiModalTrainer(config, model)
        loss_func = model.calculate_loss
        if denoise:
            trainer.damrs.setup(loaders[0]._dataset)
            if forced:
                monkeypatch.setattr(trainer.damrs, "weights", lambda users, *rest: (
                    torch.ones(len(users)), torch.zeros(len(users))))
            loss_func = trainer.damrs.loss_function(loss_func)
        torch.manual_seed(3)
        if hasattr(model, "pre_epoch_processing"):
            model.pre_epoch_processing()
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        loss = loss_func(next(iter(loaders[0])))
        loss.backward()
        optimizer.step()
        return loss.item(), [p.detach().clone() for p in model.parameters()]

    initial = [p.detach().clone() for p in build_model(run_config(), model_class)[3].parameters()]

    plain_loss, plain = one_step(None, False)
    forced_loss, forced = one_step("damrs", True)
    weighted_loss, _ = one_step("damrs", False)
    assert forced_loss == pytest.approx(plain_loss, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(plain, forced))
    assert any(not torch.equal(a, b) for a, b in zip(plain, initial)), "the step moved the model"
    assert abs(weighted_loss - plain_loss) > 1e-3


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("model_class, message", [
    (BM3, "BM3 trains without sampled negatives"),
    (ItemKNNCBF, "ItemKNNCBF trains nothing"),
    (NeuMF, "denoise: damrs needs NeuMF's user and item representations"),
    (CLIPMLP, "CLIPMLP cannot be trained with denoise: damrs"),
])
def test_students_it_cannot_weigh_are_refused(run_config, model_class, message):
    config, _, _, model = build_model(run_config(denoise="damrs"), model_class)
    with pytest.raises(ConfigError, match=message):
        MultiModalTrainer(config, model)


class OwnLossVBPR(VBPR):
    """Holds the base class's BPRLoss but computes its loss without it."""

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        user_e = self.user_embedding[users]
        margin = (user_e * self.item_embeddings(pos)).sum(-1) - (user_e * self.item_embeddings(neg)).sum(-1)
        return -torch.nn.functional.logsigmoid(margin).mean()


def test_a_student_whose_loss_never_calls_its_bpr_is_refused_at_its_first_batch(run_config):
    _, train, model, trainer = denoised(run_config, OwnLossVBPR)
    with pytest.raises(ConfigError, match="OwnLossVBPR's loss never called its BPRLoss module"):
        trainer.damrs.loss_function(model.calculate_loss)(next(iter(train)))


def test_a_dataset_without_both_modalities_is_refused(data_root, tmp_path):
    from recbole_mm.data import create_dataset, data_preparation

    config = Config("VBPR", "only_text", None, {**one_modality_config(data_root, tmp_path, "text"), "denoise": "damrs"})
    train = data_preparation(config, create_dataset(config))[0]
    trainer = MultiModalTrainer(config, VBPR(config, train._dataset))
    with pytest.raises(ConfigError, match=r"both the 'image' and the 'text' features .* has \['text'\]"):
        trainer.fit(train, saved=False)


@pytest.mark.parametrize("key, value", [("damrs_knn_k", 0), ("damrs_mm_layers", 1.5), ("damrs_behaviour_k", "two")])
def test_bad_damrs_keys_name_the_key(run_config, key, value):
    with pytest.raises(ConfigError, match=f"^{key} must be an integer >= 1"):
        Config("LightGCN", "synthetic", None, run_config(denoise="damrs", **{key: value}))


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("model_name", ["VBPR", "FREEDOM", "LightGCN"])
def test_one_epoch_from_the_command_line(data_root, tmp_path, monkeypatch, capsys, model_name):
    weighed = []
    weights = DAMRSDenoiser.weights
    monkeypatch.setattr(DAMRSDenoiser, "weights", lambda self, *a: weighed.append(1) or weights(self, *a))
    status = cli.main([f"--model={model_name}", "--dataset=synthetic", "--epochs=1", "--denoise=damrs",
                       f"--data_path={data_root}", f"--checkpoint_dir={tmp_path / 'saved'}"])
    assert status == 0
    out = capsys.readouterr().out
    assert "test result: recall@5" in out
    assert weighed, "the training batches were weighted"


@pytest.mark.parametrize("model_name", available_models(plugin=True))
def test_every_plugin_model_trains_a_batch_under_damrs_or_says_why_not(run_config, model_name):
    refusals = {"ItemKNNCBF": "ItemKNNCBF trains nothing", "BM3": "BM3 trains without sampled negatives",
                "SLMRec": "SLMRec trains without sampled negatives", "SelfCF": "SelfCF trains without sampled negatives",
                "CLIPMLP": "CLIPMLP cannot be trained with denoise: damrs"}
    config, _, loaders, model = build_model(run_config(denoise="damrs"), get_model(model_name))
    if model_name not in refusals and not any(isinstance(m, BPRLoss) for m in model.modules()):
        refusals[model_name] = f"{model_name} computes its loss without a BPRLoss module"
    with pytest.raises(ConfigError, match=refusals[model_name]) if model_name in refusals else nullcontext():
        trainer = MultiModalTrainer(config, model)
        trainer.damrs.setup(loaders[0]._dataset)
        model.train()
        if hasattr(model, "pre_epoch_processing"):
            model.pre_epoch_processing()
        loss = trainer.damrs.loss_function(model.calculate_loss)(next(iter(loaders[0])))
        loss = sum(loss) if isinstance(loss, tuple) else loss
        assert torch.isfinite(loss)
        loss.backward()
