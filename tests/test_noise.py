"""Noise injection and the denoising baselines (T-CE, R-CE, WBPR) with any model."""
import math
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from recbole.model.general_recommender.bpr import BPR
from recbole.model.general_recommender.lightgcn import LightGCN

from recbole_mm.config import Config
from recbole_mm.data import create_dataset, data_preparation
from recbole_mm.data.noise import injected_mask, pair_keys
from recbole_mm.model.loss import DenoisingBPRLoss, install_denoising_loss
from recbole_mm.model.freedom import FREEDOM
from recbole_mm.model.vbpr import VBPR
from recbole_mm.trainer import MultiModalTrainer
from recbole_mm.utils import available_models, get_model, trains
from tests.conftest import REPO_ROOT, build_model
from tests.test_dataset import MMREC_ROWS, MMREC_SETTINGS, write_mmrec

COLDSTART = os.path.join(REPO_ROOT, "properties", "coldstart.yaml")


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
    as_numpy = injected_mask(feat[noisy_train.uid_field].numpy(), feat[noisy_train.iid_field].numpy(),
                             injected, noisy_train.item_num)
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, mask.numpy())
    assert clean_train.injected_pairs is None, "no noise: nothing recorded"
    assert not injected_mask(feat[noisy_train.uid_field], feat[noisy_train.iid_field], None,
                             noisy_train.item_num).any()
    matrix = model.interaction_matrix.tocsr()
    users, items = injected // noisy_train.item_num, injected % noisy_train.item_num
    assert (np.asarray(matrix[users, items]).ravel() > 0).all(), "the model trains on the noise"
    _, _, again, _ = build_model(run_config(noise_ratio=0.1), VBPR)
    assert np.array_equal(again[0]._dataset.injected_pairs, injected), "deterministic for a seed"


@pytest.mark.parametrize("ratio", [1.5, 1.0, -0.1, "lots"])
def test_bad_noise_ratio_raises(run_config, ratio):
    with pytest.raises(ValueError, match=r"noise_ratio must be a number in \[0, 1\)"):
        build_model(run_config(noise_ratio=ratio), VBPR)


def test_noise_never_uses_held_out_cold_start_items(run_config):
    config = Config("BPR", "synthetic", [COLDSTART], run_config(noise_ratio=0.2))
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    injected = train._dataset.injected_pairs
    assert len(injected) == round(0.2 * (train._dataset.inter_num - len(injected)))
    assert not np.isin(injected % dataset.item_num, np.concatenate(dataset.cold_items)).any()


def test_noise_on_an_mmrec_folder_goes_to_its_train_file_only(tmp_path, run_config):
    write_mmrec(tmp_path / "data" / "mini", "mini", MMREC_ROWS, n_feature_rows=10)
    splits = {}
    for ratio in (0.0, 0.1):
        config = Config("VBPR", "mini", config_dict=run_config(
            data_path=str(tmp_path / "data"), synthetic_generator=None, noise_ratio=ratio, **MMREC_SETTINGS))
        splits[ratio] = [loader._dataset for loader in data_preparation(config, create_dataset(config))]
    clean, noisy = splits[0.0], splits[0.1]
    assert noisy[0].inter_num == 24 + 2 and len(noisy[0].injected_pairs) == 2  # round(0.1 x 24)
    assert noisy[0].inter_feat.columns == clean[0].inter_feat.columns
    assert not np.isin(noisy[0].injected_pairs, np.concatenate([split_pairs(d) for d in clean])).any()
    for before, after in zip(clean[1:], noisy[1:]):
        assert np.array_equal(split_pairs(before), split_pairs(after))


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


def test_tce_drop_count_is_the_exact_floor():
    loss = DenoisingBPRLoss("tce", drop_rate=0.1, num_gradual=30)
    for iteration in range(0, 40, 3):
        loss.iteration = iteration
        for batch in (1, 7, 30, 2048):
            exact = Fraction("0.1") * min(iteration, 30) / 30 * batch
            assert loss.n_dropped(batch) == min(math.floor(exact), batch - 1), (iteration, batch)


def test_rce_weights_rows_by_their_detached_probability():
    loss = DenoisingBPRLoss("rce", beta=0.5)
    pos, neg = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    margin = pos - neg
    expected = (torch.sigmoid(margin) ** 0.5 * -torch.nn.functional.logsigmoid(margin)).mean()
    assert torch.allclose(loss(pos, neg), expected)
    pos.requires_grad_(True)
    loss(pos, neg).backward()
    weights = torch.sigmoid(margin) ** 0.5
    assert torch.allclose(pos.grad, -weights * torch.sigmoid(-margin) / 3), "the weight is a constant"


@pytest.mark.parametrize("model_class", [VBPR, LightGCN, BPR, FREEDOM])  # FREEDOM: 3 BPR calls a batch
def test_denoising_reaches_any_model_and_counts_batches(run_config, model_class):
    config, _, loaders, model = build_model(run_config(denoise="tce"), model_class)
    trainer = MultiModalTrainer(config, model)
    assert isinstance(trainer.denoising_loss, DenoisingBPRLoss)
    bpr_modules = [m for m in model.modules() if type(m).__name__ == "BPRLoss"]
    assert not bpr_modules, "every BPRLoss replaced"
    trainer._train_epoch(loaders[0], 0)
    assert trainer.denoising_loss.iteration == len(loaders[0])
    trainer._train_epoch(loaders[0], 1)
    assert trainer.denoising_loss.iteration == 2 * len(loaders[0])


def test_model_without_bpr_loss_cannot_be_denoised(run_config):
    with pytest.raises(ValueError, match="Linear computes its loss without a BPRLoss"):
        install_denoising_loss(torch.nn.Linear(2, 2), DenoisingBPRLoss("tce"))
    from recbole.model.general_recommender.pop import Pop

    config, _, _, model = build_model(run_config(denoise="rce"), Pop)
    with pytest.raises(ValueError, match="Pop computes its loss without a BPRLoss"):
        MultiModalTrainer(config, model)


def test_unknown_denoise_value_raises(run_config):
    config, _, _, model = build_model(run_config(), VBPR)
    config["denoise"] = "coteaching"
    with pytest.raises(ValueError, match=r"denoise must be one of \['tce', 'rce', 'wbpr', 'bod', 'damrs'\]"):
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


def negative_ratio_top_to_bottom(loader):
    """Mean negative draws of the 20 most popular train items over those of the 40 least
    popular ones that occur in train."""
    dataset = loader._dataset
    popularity = np.bincount(dataset.inter_feat[dataset.iid_field].numpy(), minlength=dataset.item_num)
    negatives = np.concatenate([batch["neg_" + dataset.iid_field].numpy() for _ in range(3) for batch in loader])
    drawn = np.bincount(negatives, minlength=len(popularity))
    order = np.argsort(-popularity, kind="stable")
    order = order[popularity[order] > 0]
    return drawn[order[:20]].mean() / max(drawn[order[-40:]].mean(), 1e-9)


def test_wbpr_with_the_cold_start_split_keeps_held_out_items_out(run_config):
    ratios = {}
    for mode in (None, "wbpr"):
        config = Config("BPR", "synthetic", [COLDSTART], run_config(denoise=mode))
        dataset = create_dataset(config)
        train, _, _ = data_preparation(config, dataset)
        held_out = np.concatenate(dataset.cold_items)
        for batch in train:
            assert not np.isin(batch["neg_item_id"].numpy(), held_out).any()
        ratios[mode] = negative_ratio_top_to_bottom(train)
    assert train._sampler.distribution == "popularity"
    assert ratios["wbpr"] > 3 * ratios[None], ratios


@pytest.mark.parametrize("denoise", ["tce", "rce", "wbpr"])
def test_noise_and_denoising_end_to_end(tmp_path, monkeypatch, denoise):
    """A short run under each denoising baseline, with spies on the two places denoising acts:
    every training batch's BPR goes through DenoisingBPRLoss (T-CE drops its largest-loss rows,
    R-CE weights its rows unevenly, so neither equals plain BPR), or (WBPR) the negatives come
    from the popularity draw and the BPR stays plain."""
    from recbole_mm.data.sampler import PopularityDraw
    from tests.conftest import SMALL_SYNTHETIC, train_each

    losses, draws = [], []
    forward, draw = DenoisingBPRLoss.forward, PopularityDraw.__call__

    def spied_forward(self, pos_score, neg_score):
        margin = (pos_score - neg_score).reshape(-1).detach()
        result = forward(self, pos_score, neg_score)
        plain = -torch.nn.functional.logsigmoid(margin).mean()
        weights = torch.sigmoid(margin).pow(self.beta)
        losses.append({"mode": self.mode, "dropped": self.n_dropped(len(margin)), "weight_spread": float(weights.std()),
                       "result": float(result), "plain": float(plain)})
        return result

    def spied_draw(self, sample_num):
        draws.append(sample_num)
        return draw(self, sample_num)

    monkeypatch.setattr(DenoisingBPRLoss, "forward", spied_forward)
    monkeypatch.setattr(PopularityDraw, "__call__", spied_draw)
    runs = train_each(tmp_path, ["VBPR"], "synthetic", epochs=2, noise_ratio=0.1, denoise=denoise,
                      tce_num_gradual=2, synthetic_generator=dict(SMALL_SYNTHETIC))
    assert 0.0 <= runs["VBPR"]["test_result"]["recall@20"] <= 1.0
    trainer = runs["VBPR"]["trainer"]
    if denoise == "wbpr":
        assert trainer.denoising_loss is None and not losses, "WBPR keeps the model's BPR"
        assert sum(draws) > 0, "the negatives came from the popularity draw"
        return
    assert not draws, "uniform negatives"
    assert len(losses) >= 2 and all(record["mode"] == denoise for record in losses)
    assert trainer.denoising_loss.iteration == len(losses), "one iteration per training batch"
    later = losses[1:]  # T-CE drops nothing at iteration 0
    if denoise == "tce":
        assert all(record["dropped"] > 0 for record in later), later
        assert all(record["result"] < record["plain"] for record in later), "the largest losses were dropped"
    else:
        assert all(record["weight_spread"] > 0 for record in losses)
        assert all(abs(record["result"] - record["plain"]) > 1e-4 for record in losses), "rows reweighted"


# trained on positive pairs only (BM3, SLMRec), or with a pairwise loss of their own (DAMRS's
# triple-weighted BPR, MVGAE's reconstruction): no BPR for tce / rce / bod to replace
NO_BPR_MODELS = tuple(name for name in available_models(plugin=True)
                      if getattr(get_model(name), "use_neg_sampling", True) is False) + ("DAMRS", "MVGAE")
# nothing trained (ItemKNNCBF): no loss to denoise
UNTRAINED_MODELS = tuple(name for name in available_models(plugin=True) if not trains(get_model(name)))


@pytest.mark.parametrize("model_name", available_models(plugin=True))
def test_every_plugin_model_accepts_a_denoising_loss(run_config, model_name):

    config, _, loaders, model = build_model(run_config(denoise="rce"), get_model(model_name))
    if model_name in UNTRAINED_MODELS:
        with pytest.raises(ValueError, match=f"{model_name} trains nothing"):
            MultiModalTrainer(config, model)
        return
    if model_name in NO_BPR_MODELS:
        with pytest.raises(ValueError, match=f"{model_name} computes its loss without a BPRLoss module"):
            MultiModalTrainer(config, model)
        return
    trainer = MultiModalTrainer(config, model)
    batch = next(iter(loaders[0]))
    model.train()
    loss = model.calculate_loss(batch)
    loss = sum(loss) if isinstance(loss, tuple) else loss
    assert torch.isfinite(loss)
    assert any(m is trainer.denoising_loss for m in model.modules())


@pytest.mark.parametrize("model_name", available_models(plugin=True))
def test_every_plugin_model_accepts_bod_or_says_why_not(run_config, model_name):
    """BOD weighs a pair by its user and item vectors: every plugin model with both trains one
    batch under it; CLIPMLP (item vectors only by default) raises a clear error."""

    config, _, loaders, model = build_model(run_config(denoise="bod"), get_model(model_name))
    if model_name in UNTRAINED_MODELS:
        with pytest.raises(ValueError, match=f"{model_name} trains nothing"):
            MultiModalTrainer(config, model)
        return
    if model_name == "CLIPMLP":
        with pytest.raises(ValueError, match="CLIPMLP cannot be trained with denoise: bod"):
            MultiModalTrainer(config, model)
        return
    if model_name in NO_BPR_MODELS:
        with pytest.raises(ValueError, match=f"{model_name} computes its loss without a BPRLoss module"):
            MultiModalTrainer(config, model)
        return
    trainer = MultiModalTrainer(config, model)
    model.train()
    loss = trainer.bod.inner_loss(model.calculate_loss)(next(iter(loaders[0])))
    loss = sum(loss) if isinstance(loss, tuple) else loss
    assert torch.isfinite(loss)
    assert any(m is trainer.bod.loss for m in model.modules())


def test_wbpr_popularity_counts_the_train_split_only(run_config):
    _, _, loaders, _ = build_model(run_config(denoise="wbpr"), VBPR)
    train = loaders[0]
    field = train._dataset.iid_field
    train_items = train._dataset.inter_feat[field].numpy()
    assert np.array_equal(np.sort(np.asarray(train._sampler._get_candidates_list())), np.sort(train_items))
    negatives = np.concatenate([batch["neg_" + field].numpy() for _ in range(5) for batch in train])
    train_counts = np.bincount(train_items, minlength=train._dataset.item_num)
    assert train_counts[negatives].min() > 0
