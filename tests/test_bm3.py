"""BM3: positive-only batches through RecBole's own switch, the predictor-based scores, the loss
terms, the trainable-features switch, GUIDER's own negatives for its teacher, accuracy."""
import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

from recbole_mm.model.bm3 import BM3
from recbole_mm.model.layers import propagate
from recbole_mm.trainer import GUIDERTrainer, MultiModalTrainer
from recbole_mm.trainer import guider_ops as ops
from tests.conftest import REPO_ROOT, build_model, train_each, train_steps

MMREC_NEGATIVES = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), BM3)
    return config, loaders, model


def epoch_pairs(train, model):
    """The (user, item) rows of one pass over the train loader, sorted, and whether any batch
    carried a negative item."""
    pairs, negatives = [], False
    for batch in train:
        negatives |= model.NEG_ITEM_ID in batch
        pairs.append(torch.stack([batch[model.USER_ID], batch[model.ITEM_ID]], 1))
    return sorted(map(tuple, torch.cat(pairs).tolist())), negatives


def train_pairs(train, model):
    feat = train._dataset.inter_feat
    return sorted(map(tuple, torch.stack([feat[model.USER_ID], feat[model.ITEM_ID]], 1).tolist()))


def test_batches_hold_each_train_interaction_once_and_no_negatives(run_config):
    config, (train, _, _), model = build(run_config)
    assert config["train_neg_sample_args"]["distribution"] == "none" and train._sampler is None
    for _ in range(2):
        pairs, negatives = epoch_pairs(train, model)
        assert not negatives
        assert pairs == train_pairs(train, model)


def test_a_user_file_cannot_turn_negatives_back_on(run_config, caplog):
    with caplog.at_level(logging.WARNING):
        config, (train, _, _), model = build(run_config, train_neg_sample_args=dict(MMREC_NEGATIVES))
    assert "BM3 trains without negative sampling" in caplog.text
    pairs, negatives = epoch_pairs(train, model)
    assert not negatives and pairs == train_pairs(train, model)
    with pytest.raises(ValueError, match="denoise: wbpr draws popularity negatives, but BM3"):
        build(run_config, denoise="wbpr")
    config, _, model = build(run_config, denoise="rce")
    with pytest.raises(ValueError, match="BM3 computes its loss without a BPRLoss"):
        MultiModalTrainer(config, model)


def test_scores_are_products_of_predicted_online_embeddings(run_config):
    _, _, model = build(run_config)
    with torch.no_grad():
        model.item_id_embedding.add_(0.1 * torch.randn_like(model.item_id_embedding))
        nodes = propagate(model.adjacency, torch.cat([model.user_embedding, model.item_id_embedding]), 1, "mean")
        users, items = nodes[:model.n_users], nodes[model.n_users:] + model.item_id_embedding
        expected = model.predictor(users) @ model.predictor(items).T
        model.train()
        assert torch.allclose(model.online_embeddings()[1], items)
        training_forward = model.forward()
    model.eval()
    scores = model.full_sort_predict(Interaction({model.USER_ID: torch.arange(model.n_users)}))
    assert torch.allclose(scores.view(model.n_users, -1), expected, atol=1e-5)
    assert torch.allclose(model.score_rows(torch.tensor([1, 2]), torch.tensor([3, 4])), expected[1:3, 3:5], atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(training_forward, model.forward())), "forward has no dropout"


def test_loss_terms_are_mmrecs(run_config):
    """dropout 0: the targets are the online embeddings themselves."""
    _, (train, _, _), model = build(run_config, dropout=0.0)
    batch = next(iter(train))
    u, i = batch[model.USER_ID], batch[model.ITEM_ID]
    model.train()

    def c(a, b):
        return 1 - F.cosine_similarity(a, b, dim=-1).mean()

    with torch.no_grad():
        users, items = model.online_embeddings()
        predictor = model.predictor
        main = c(predictor(users[u]), items[i]) + c(predictor(items[i]), users[u])
        reg = (users.norm() + items.norm()) / model.n_items
        modal = 0.0
        for name in ("text", "image"):
            projected = model.features[name][i] @ model.projections[name].weight.T + model.projections[name].bias
            modal += c(predictor(projected), items[i]) + c(predictor(projected), projected)
        assert model.calculate_loss(batch).item() == pytest.approx((main + 0.1 * reg + 2.0 * modal).item(), rel=1e-5)
    _, _, plain = build(run_config, dropout=0.0, cl_weight=0.0, reg_weight=0.0)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert plain.calculate_loss(batch).item() == pytest.approx(main.item(), rel=1e-5)
    _, _, perturbed = build(run_config, dropout=0.5)
    perturbed.load_state_dict(model.state_dict())
    with torch.no_grad():
        first, second = perturbed.calculate_loss(batch).item(), perturbed.calculate_loss(batch).item()
    assert first != second, "a new dropout mask on the targets at every step"


def test_targets_carry_no_gradient(run_config):
    """Only the online side is trained: with the predictor frozen at the identity and dropout
    0, c(P h_u, sg(h_i)) moves h_u towards h_i but not h_i towards h_u."""
    _, (train, _, _), model = build(run_config, dropout=0.0, cl_weight=0.0, reg_weight=0.0, n_layers=0)
    with torch.no_grad():
        model.predictor.weight.copy_(torch.eye(model.embedding_size))
        model.predictor.bias.zero_()
    model.train()
    users, items = torch.tensor([1]), torch.tensor([2])
    loss = model.calculate_loss(Interaction({model.USER_ID: users, model.ITEM_ID: items}))
    loss.backward()
    h_u, h_i = model.user_embedding[1].detach(), 2 * model.item_id_embedding[2].detach()
    # d/dh_u [1 - cos(h_u, h_i)] alone: the item term's gradient reaches the item only
    expected = -(F.normalize(h_i, dim=0) - F.cosine_similarity(h_u, h_i, dim=0) * F.normalize(h_u, dim=0)) / h_u.norm()
    assert torch.allclose(model.user_embedding.grad[1], expected, atol=1e-5)


def test_loss_falls_on_a_fixed_batch(run_config):
    _, (train, _, _), model = build(run_config)
    losses = train_steps(model, next(iter(train)), 8, lr=0.01)
    assert losses[-1] < 0.8 * losses[0]


def test_trainable_features_switch_freezes_only_the_raw_tables(run_config):
    _, (train, _, _), trained = build(run_config)
    _, _, frozen = build(run_config, trainable_features=False)
    trainable = {name for name, p in trained.named_parameters() if p.requires_grad}
    assert trainable - {name for name, p in frozen.named_parameters() if p.requires_grad} == {
        "features.text", "features.image"}
    batch = next(iter(train))
    for model in (trained, frozen):
        model.train()
        model.calculate_loss(batch).backward()
    assert trained.features["text"].grad.abs().sum() > 0 and frozen.features["text"].grad is None


def test_sample_unobserved_avoids_observed_pairs_and_stays_in_the_candidates():
    n_items = 6
    observed = torch.tensor([[1, 1], [1, 2], [1, 3], [2, 5]])
    keys = torch.sort(observed[:, 0] * n_items + observed[:, 1]).values
    candidates = torch.tensor([1, 2, 3, 4, 5])
    users = torch.tensor([1, 2] * 500)
    items = ops.sample_unobserved(users, candidates, keys, n_items, torch.Generator().manual_seed(0))
    assert set(items[users == 1].tolist()) == {4, 5}
    assert set(items[users == 2].tolist()) == {1, 2, 3, 4}
    counts = torch.bincount(items[users == 2], minlength=5)[1:]
    assert counts.min() > 90 and counts.max() < 160, f"uniform over the unobserved candidates: {counts}"
    with pytest.raises(ValueError, match="no unobserved negative"):
        ops.sample_unobserved(torch.tensor([1]), torch.tensor([1, 2, 3]), keys, n_items, max_rounds=5)


def test_guider_teacher_draws_its_own_negatives_for_bm3(tmp_path, monkeypatch):
    """properties/guider.yaml, --epochs=2 --guider_teacher_pretrain_epochs=2: every teacher batch
    gets one negative per row, never an item the user has in train."""
    seen = []
    negatives = GUIDERTrainer.negatives

    def recorded(self, interaction):
        drawn = negatives(self, interaction)
        users = interaction[self.model.USER_ID]
        observed = ops.key_membership(users, drawn, self.train_keys, self.n_items)
        seen.append((self.model.NEG_ITEM_ID in interaction, len(drawn) == len(users), bool(observed.any()),
                     bool(torch.isin(drawn, self.negative_candidates).all())))
        return drawn

    monkeypatch.setattr(GUIDERTrainer, "negatives", recorded)
    run = train_each(tmp_path, ["BM3"], "synthetic", [os.path.join(REPO_ROOT, "properties", "guider.yaml")],
                     epochs=2, guider_teacher_pretrain_epochs=2)["BM3"]
    assert isinstance(run["trainer"], GUIDERTrainer) and run["trainer"].teacher_epochs == 4
    assert len(seen) >= 4 and seen == [(False, True, False, True)] * len(seen)
    assert np.isfinite(run["test_result"]["recall@20"])


@pytest.mark.slow
def test_bm3_beats_popularity(tmp_path):
    runs = train_each(tmp_path, ["BM3", "Pop"], "synthetic", epochs=30)
    assert runs["BM3"]["best_valid_result"]["recall@20"] > 1.5 * runs["Pop"]["best_valid_result"]["recall@20"]
