"""``optimizer_impl``: the trainer's optimiser is fused by default, and fused / foreach /
single compute the same updates."""
import os

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


def test_default_is_fused_for_the_plugins_models_and_recboles_own_for_recboles(run_config):
    config, _, _, model = build_model(run_config(), FREEDOM)
    assert config["optimizer_impl"] == "fused"
    assert MultiModalTrainer(config, model).optimizer.defaults["fused"] is True
    from recbole.model.general_recommender import LightGCN

    config, _, _, model = build_model(run_config(), LightGCN)
    assert config["optimizer_impl"] == "recbole"
    assert MultiModalTrainer(config, model).optimizer.defaults["foreach"] is None, "torch's own choice"


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


@pytest.mark.slow
def test_recbole_models_give_recboles_numbers_through_the_plugin(tmp_path):
    """NGCF (RecBole's) trained and tested by plain RecBole and through the plugin, on the same
    values (the plugin's overall.yaml given to both): identical metrics, because RecBole's models
    keep RecBole's own optimiser (``optimizer_impl: recbole``); the fused one moves them."""
    import numpy as np
    import yaml
    from recbole.config import Config as RecBoleConfig
    from recbole.data import create_dataset as recbole_dataset
    from recbole.data import data_preparation as recbole_preparation
    from recbole.model.general_recommender import NGCF
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    from recbole_mm.config import Config
    from recbole_mm.data import create_dataset, data_preparation
    from tests.conftest import REPO_ROOT

    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, 150, 3000), rng.zipf(1.3, 3000) % 120)}
    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u, i in pairs))
    with open(os.path.join(REPO_ROOT, "recbole_mm", "properties", "overall.yaml")) as handle:
        values = yaml.safe_load(handle)
    values.update(data_path=str(tmp_path), checkpoint_dir=str(tmp_path / "saved"), epochs=3, seed=2020,
                  state="WARNING", show_progress=False, train_batch_size=256, metrics=["Recall", "NDCG"], topk=[10], valid_metric="Recall@10")

    def run(config, create, prepare, trainer_class):
        init_seed(config["seed"], config["reproducibility"])
        train, valid, test = prepare(config, create(config))
        init_seed(config["seed"], config["reproducibility"])
        trainer = trainer_class(config, NGCF(config, train._dataset).to(config["device"]))
        trainer.fit(train, valid, saved=False)
        weights = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
        return dict(trainer.evaluate(test, load_best_model=False)), weights, trainer.optimizer

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded sparse products sum in a varying order (1e-7 apart)
    try:
        plain, plain_weights, _ = run(RecBoleConfig(NGCF, "tiny", config_dict=dict(values)), recbole_dataset,
                                      recbole_preparation, Trainer)
        ours, our_weights, optimizer = run(Config("NGCF", "tiny", config_dict=dict(values)), create_dataset,
                                           data_preparation, MultiModalTrainer)
        assert not optimizer.defaults.get("fused") and ours == plain and same(our_weights, plain_weights)
        _, fused_weights, optimizer = run(Config("NGCF", "tiny", config_dict={**values, "optimizer_impl": "fused"}),
                                          create_dataset, data_preparation, MultiModalTrainer)
        assert optimizer.defaults["fused"] is True and not same(fused_weights, plain_weights), "the check can fail"
    finally:
        torch.set_num_threads(threads)
