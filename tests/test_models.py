"""VBPR, the MultiModalRecommender contract and the trainer hooks."""
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_mm.model.vbpr import VBPR
from recbole_mm.trainer import MultiModalTrainer
from tests.conftest import build_model


def build(run_config, model_class=VBPR, **overrides):
    return build_model(run_config(**overrides), model_class)


def all_users(model):
    return Interaction({model.USER_ID: torch.arange(1, model.n_users)})


def test_vbpr_scores_are_user_dot_item_of_id_and_projected_content(run_config):
    _, dataset, _, model = build(run_config)
    model.eval()
    features = torch.cat([dataset.modality_features["text"], dataset.modality_features["image"]], dim=1)
    assert torch.equal(model.item_raw_features, features), "text then image, in dataset order"
    gamma_u, theta_u = model.user_embedding[:, :64], model.user_embedding[:, 64:]
    content = features @ model.content_projection.weight.T + model.content_projection.bias
    expected = gamma_u @ model.item_id_embedding.T + theta_u @ content.T
    scores = model.full_sort_predict(all_users(model)).view(model.n_users - 1, model.n_items)
    assert torch.allclose(scores, expected[1:], atol=1e-5)
    pairs = Interaction({model.USER_ID: torch.tensor([1, 2, 3]), model.ITEM_ID: torch.tensor([5, 6, 7])})
    assert torch.allclose(model.predict(pairs), expected[[1, 2, 3], [5, 6, 7]], atol=1e-5)


def test_vbpr_paper_biases_switch(run_config):
    _, dataset, _, plain = build(run_config)
    assert not hasattr(plain, "item_bias")
    _, _, _, model = build(run_config, vbpr_bias=True)
    with torch.no_grad():
        model.item_bias.normal_()
        model.content_bias.weight.normal_()
    model.eval()
    user_e, item_e = model.forward()
    offsets = model.item_bias + (model.item_raw_features @ model.content_bias.weight.T).squeeze(-1)
    scores = model.full_sort_predict(all_users(model)).view(model.n_users - 1, model.n_items)
    assert torch.allclose(scores, (user_e @ item_e.T + offsets)[1:], atol=1e-5)


def test_content_features_change_vbpr_scores(run_config):
    _, _, _, model = build(run_config)
    model.eval()
    before = model.full_sort_predict(all_users(model))
    model.train()
    model.item_raw_features = model.item_raw_features.flip(0)
    model.eval()
    assert not torch.allclose(before, model.full_sort_predict(all_users(model)))


def test_missing_features_are_a_clear_error(run_config):
    with pytest.raises(ValueError, match="VBPR needs item features, but dataset 'synthetic' has none"):
        build(run_config, modality_files={}, modalities=None)
    with pytest.raises(ValueError, match=r"VBPR needs modalities \['text', 'image'\].*it has \[\]"):
        build(run_config, modality_files={})
    with pytest.raises(ValueError, match=r"needs modalities \['audio'\]"):
        build(run_config, modalities=["audio"])


class CountingVBPR(VBPR):
    """VBPR that counts its forward passes and per-epoch hook calls."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.forward_calls = 0
        self.hook_calls = 0

    def forward(self):
        self.forward_calls += 1
        return super().forward()

    def pre_epoch_processing(self):
        self.hook_calls += 1


def test_full_sort_computes_representations_once_per_evaluation(run_config):
    config, _, (train, valid, _), model = build(run_config, CountingVBPR, eval_batch_size=200 * 20)
    trainer = MultiModalTrainer(config, model)
    assert len(valid) > 3, "several user batches per evaluation"
    trainer.evaluate(valid, load_best_model=False)
    assert model.forward_calls == 1
    trainer.evaluate(valid, load_best_model=False)
    assert model.forward_calls == 2, "a new evaluation recomputes (train() or eval() drops the cache)"
    model.train()
    assert model._eval_cache is None


def test_trainer_calls_the_epoch_hook_and_steps_the_schedule(run_config):
    config, _, (train, valid, _), model = build(
        run_config, CountingVBPR, epochs=3, learning_rate_scheduler=[0.5, 1], eval_step=10)
    trainer = MultiModalTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    assert model.hook_calls == 3
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.001 * 0.5 ** 3)


def test_vbpr_loss_falls(run_config):
    config, _, (train, valid, _), model = build(run_config, epochs=15, eval_step=100)
    trainer = MultiModalTrainer(config, model)
    trainer.fit(train, valid, saved=False)
    losses = [trainer.train_loss_dict[e] for e in sorted(trainer.train_loss_dict)]
    assert losses[-1] < 0.8 * losses[0]
    assert all(b < a for a, b in zip(losses[:-1], losses[1:])), "monotone on this easy problem"
