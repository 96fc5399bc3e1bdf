"""``optimizer_impl``: the trainer's optimiser is fused by default, and fused / foreach /
single compute the same updates."""
import pytest
import torch

from recbole_mm.model.freedom import FREEDOM
from recbole_mm.trainer.trainer import MultiModalTrainer, build_optimizer
from tests.conftest import build_model


def trained_parameters(run_config, impl, learner="adam", steps=4):
    config, _, (train, _, _), model = build_model(run_config(optimizer_impl=impl, learner=learner, train_batch_size=256), FREEDOM)
    trainer = MultiModalTrainer(config, model)
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    batches = iter(train)
    model.pre_epoch_processing()
    for _ in range(steps):
        batch = next(batches).to(model.device)
        trainer.optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        (sum(loss) if isinstance(loss, tuple) else loss).backward()
        trainer.optimizer.step()
    final = {name: param.detach().clone() for name, param in model.named_parameters()}
    assert any(not torch.equal(initial[name], final[name]) for name in final)  # the steps moved something
    return trainer.optimizer, final


@pytest.mark.parametrize("learner", ["adam", "adamw"])
def test_fused_matches_single(run_config, learner):
    fused_optimizer, fused = trained_parameters(run_config, "fused", learner)
    single_optimizer, single = trained_parameters(run_config, "single", learner)
    assert fused_optimizer.defaults["fused"] is True
    assert not single_optimizer.defaults["fused"] and single_optimizer.defaults["foreach"] is False
    for name in single:
        torch.testing.assert_close(fused[name], single[name], rtol=1e-5, atol=1e-6)


def test_default_is_fused(run_config):
    config, _, _, model = build_model(run_config(), FREEDOM)
    assert config["optimizer_impl"] == "fused"
    assert MultiModalTrainer(config, model).optimizer.defaults["fused"] is True


def test_fallback_and_errors():
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.int64).float())]
    rmsprop = build_optimizer("rmsprop", params, "fused", lr=0.1)  # no fused RMSprop in torch
    assert rmsprop.defaults["foreach"] is True
    complex_params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))]
    assert build_optimizer("adam", complex_params, "fused", lr=0.1).defaults["foreach"] is True
    assert build_optimizer("adam", params, "fused", sparse_grads=True, lr=0.1).defaults["foreach"] is True
    with pytest.raises(ValueError, match="optimizer_impl"):
        build_optimizer("adam", params, "fast", lr=0.1)


@pytest.mark.parametrize("impl", ["fused", "single"])
def test_guider_optimisers_follow_the_switch(run_config, impl):
    """GUIDER's student (AdamW here) and teacher (AdamW) optimisers use ``optimizer_impl`` too."""
    from recbole_mm.model.vbpr import VBPR
    from recbole_mm.trainer import GUIDERTrainer

    config, _, loaders, model = build_model(run_config(guider=True, optimizer_impl=impl,
                                                       guider_student_learner="adamw"), VBPR)
    trainer = GUIDERTrainer(config, model)
    trainer._setup(loaders[0])
    for optimizer in (trainer.optimizer, trainer.teacher_optimizer):
        assert isinstance(optimizer, torch.optim.AdamW)
        assert bool(optimizer.defaults["fused"]) == (impl == "fused")
