"""Noise injection and the denoising baselines (T-CE, R-CE, WBPR) with any model."""
import numpy as np
import pytest
import torch
from recbole.model.general_recommender.bpr import BPR
from recbole.model.general_recommender.lightgcn import LightGCN

from recbole_mm.data.noise import injected_mask, pair_keys
from recbole_mm.model.loss import DenoisingBPRLoss, install_denoising_loss
from recbole_mm.model.vbpr import VBPR
from recbole_mm.trainer import MultiModalTrainer
from recbole_mm.utils import available_models
from tests.conftest import build_model


def split_pairs(dataset):
    feat = dataset.inter_feat
    return pair_keys(feat[dataset.uid_field].numpy(), feat[dataset.iid_field].numpy(), dataset.item_num)


def test_noise_goes_to_train_only_and_is_recorded(run_config):
    _, _, clean_loaders, _ = build_model(run_config(), VBPR)
    _, _, noisy_loaders, model = build_model(run_config(noise_ratio=0.1), VBPR)
    clean_train, noisy_train = clean_loaders[0]._dataset, noisy_loaders[0]._dataset
    for clean, noisy in zip(clean_loaders[1:], noisy_loaders[1:]):
        assert np.array_equal(split_pairs(clean._dataset), split_pairs(noisy._dataset)), "valid/test untouched"
    n_train = clean_train.inter_num
    injected = noisy_train.injected_pairs
    assert noisy_train.inter_num == n_train + round(0.1 * n_train) == n_train + len(injected)
    assert len(np.unique(injected)) == len(injected)
    all_real = np.concatenate([split_pairs(d._dataset) for d in clean_loaders])
    assert not np.isin(injected, all_real).any(), "injected pairs are new"
    assert (injected % noisy_train.item_num > 0).all() and (injected // noisy_train.item_num > 0).all()
    feat = noisy_train.inter_feat
    mask = injected_mask(feat[noisy_train.uid_field], feat[noisy_train.iid_field], injected, noisy_train.item_num)
    assert isinstance(mask, torch.Tensor) and int(mask.sum()) == len(injected)
    assert not mask[:n_train].any() and mask[n_train:].all()
    matrix = model.interaction_matrix.tocsr()
    users, items = injected // noisy_train.item_num, injected % noisy_train.item_num
    assert (np.asarray(matrix[users, items]).ravel() > 0).all(), "the model trains on the noise"
    _, _, again, _ = build_model(run_config(noise_ratio=0.1), VBPR)
    assert np.array_equal(again[0]._dataset.injected_pairs, injected), "deterministic for a seed"


def test_bad_noise_ratio_raises(run_config):
    with pytest.raises(ValueError, match="noise_ratio"):
        build_model(run_config(noise_ratio=1.5), VBPR)


def test_tce_drops_the_largest_losses_with_a_ramping_rate():
    loss = DenoisingBPRLoss("tce", drop_rate=0.4, num_gradual=10)
    pos = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, 0.5, 1.5, 2.5], requires_grad=True)
    neg = torch.zeros(10)
    losses = -torch.nn.functional.logsigmoid(pos - neg)
    assert torch.allclose(loss(pos, neg), losses.mean()), "iteration 0: nothing dropped"
    loss.iteration = 5  # rate 0.2 -> drop the 2 largest losses (rows with pos -3 and -2)
    kept = losses[[0, 1, 2, 3, 4, 7, 8, 9]]
    value = loss(pos, neg)
    assert torch.allclose(value, kept.mean())
    loss.iteration = 1000
    assert loss.current_drop_rate() == 0.4
    value.backward()
    assert pos.grad[5] == 0 and pos.grad[6] == 0 and (pos.grad[[0, 1, 2, 3, 4]] != 0).all()


def test_rce_weights_rows_by_their_detached_probability():
    loss = DenoisingBPRLoss("rce", beta=0.5)
    pos, neg = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    margin = pos - neg
    expected = (torch.sigmoid(margin) ** 0.5 * -torch.nn.functional.logsigmoid(margin)).mean()
    assert torch.allclose(loss(pos, neg), expected)


@pytest.mark.parametrize("model_class", [VBPR, LightGCN, BPR])
def test_denoising_reaches_any_model_and_counts_batches(run_config, model_class):
    config, _, loaders, model = build_model(run_config(denoise="tce"), model_class)
    trainer = MultiModalTrainer(config, model)
    assert isinstance(trainer.denoising_loss, DenoisingBPRLoss)
    bpr_modules = [m for m in model.modules() if type(m).__name__ == "BPRLoss"]
    assert not bpr_modules, "every BPRLoss replaced"
    trainer._train_epoch(loaders[0], 0)
    assert trainer.denoising_loss.iteration == len(loaders[0])


def test_model_without_bpr_loss_cannot_be_denoised():
    with pytest.raises(ValueError, match="without a BPRLoss"):
        install_denoising_loss(torch.nn.Linear(2, 2), DenoisingBPRLoss("tce"))


def test_unknown_denoise_value_raises(run_config):
    config, _, _, model = build_model(run_config(), VBPR)
    config["denoise"] = "coteaching"
    with pytest.raises(ValueError, match="denoise"):
        MultiModalTrainer(config, model)


def test_wbpr_draws_popular_negatives_more_often(run_config):
    counts = {}
    for mode in (None, "wbpr"):
        _, _, loaders, _ = build_model(run_config(denoise=mode), VBPR)
        train = loaders[0]
        popularity = np.bincount(train._dataset.inter_feat[train._dataset.iid_field].numpy(),
                                 minlength=train._dataset.item_num)
        negatives = np.concatenate([batch["neg_" + train._dataset.iid_field].numpy()
                                    for _ in range(3) for batch in train])
        drawn = np.bincount(negatives, minlength=len(popularity))
        top, bottom = np.argsort(-popularity)[:20], np.argsort(popularity)[1:41]
        counts[mode] = drawn[top].mean() / max(drawn[bottom].mean(), 1e-9)
    assert counts["wbpr"] > 3 * counts[None]


def test_noise_and_denoising_end_to_end(tmp_path):
    from tests.conftest import SMALL_SYNTHETIC, train_each

    runs = train_each(tmp_path, ["VBPR"], "synthetic", epochs=2, noise_ratio=0.1, denoise="rce",
                      synthetic_generator=dict(SMALL_SYNTHETIC))
    assert 0.0 <= runs["VBPR"]["test_result"]["recall@20"] <= 1.0


@pytest.mark.parametrize("model_name", available_models(plugin=True))
def test_every_plugin_model_accepts_a_denoising_loss(run_config, model_name):
    from recbole_mm.utils import get_model

    config, _, loaders, model = build_model(run_config(denoise="rce"), get_model(model_name))
    trainer = MultiModalTrainer(config, model)
    batch = next(iter(loaders[0]))
    model.train()
    loss = model.calculate_loss(batch)
    loss = sum(loss) if isinstance(loss, tuple) else loss
    assert torch.isfinite(loss)
    assert any(m is trainer.denoising_loss for m in model.modules())
