"""MGCN: graphs, the purifier / views / fuser against MMRec's two-modality formulas, the loss
terms, the trainable-features switch, accuracy."""
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.data.graphs import knn_graph
from recbole_mm.model.layers import propagate
from recbole_mm.model.mgcn import MGCN
from tests.conftest import build_model, train_each, train_steps


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), MGCN)
    return config, loaders, model


def test_graphs_are_the_symmetric_user_item_block_and_weighted_knn(run_config):
    _, _, model = build(run_config)
    dense = model.adjacency.to_dense()
    assert torch.equal(model.user_item_block.to_dense(), dense[:model.n_users, model.n_users:])
    for name in ("image", "text"):
        raw = model.modality_features[name][1:]
        graph = model.item_graphs[name].to_dense()
        assert torch.allclose(graph[1:, 1:], knn_graph(raw, 10, weighted=True).to_dense())
        assert graph[0].abs().sum() == 0 and graph[:, 0].abs().sum() == 0, "padding item has no edges"
        values = model.item_graphs[name].values()
        assert values.std() > 1e-3, "cosine weights, not MMRec's unweighted 1/k graph"
        assert (graph[1:, 1:] > 0).sum(1).eq(10).all()


def test_representations_follow_mmrecs_two_modality_formulas(run_config):
    _, _, model = build(run_config)
    model.eval()
    with torch.no_grad():
        for parameter in model.parameters():  # leave the initial values' symmetries behind
            parameter.add_(0.05 * torch.randn_like(parameter))
        users, items = model.forward()
        n_users = model.n_users
        ego = torch.cat([model.user_embedding, model.item_id_embedding])
        content = propagate(model.adjacency, ego, 2, "mean")

        def modal(name):
            projected = model.projections[name](model.features[name])
            linear = model.purifier_gates[name][0]
            gate = torch.sigmoid(projected @ linear.weight.T + linear.bias)
            item = torch.sparse.mm(model.item_graphs[name], model.item_id_embedding * gate)
            return torch.cat([torch.sparse.mm(model.user_item_block, item), item])

        image, text = modal("image"), modal("text")
        weights = torch.softmax(torch.cat([model.query(image), model.query(text)], dim=1), dim=1)
        common = weights[:, :1] * image + weights[:, 1:] * text
        image_part = (image - common) * model.preference_gates["image"](content)
        text_part = (text - common) * model.preference_gates["text"](content)
        expected = content + (image_part + text_part + common) / 3
    assert torch.allclose(users, expected[:n_users], atol=1e-5)
    assert torch.allclose(items, expected[n_users:], atol=1e-5)


def test_loss_is_bpr_plus_l2_plus_in_batch_infonce(run_config):
    _, (train, _, _), model = build(run_config)
    batch = next(iter(train))
    users, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    model.train()
    with torch.no_grad():
        final, side, content = model.views()
        u, i, j = final[users], final[model.n_users + pos], final[model.n_users + neg]
        bpr = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
        l2 = 0.5 * (u.pow(2).sum() + i.pow(2).sum() + j.pow(2).sum()) / len(users)

        def nce(a, b):
            logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.2
            return -torch.log_softmax(logits, dim=1).diagonal().mean()

        cl = nce(side[model.n_users + pos], content[model.n_users + pos]) + nce(side[users], content[users])
        total = model.calculate_loss(batch)
    assert total.item() == pytest.approx((bpr + 1e-4 * l2 + 0.01 * cl).item(), rel=1e-4)
    assert cl.item() > 1.0, "the InfoNCE term is not trivially zero"


def test_loss_falls_on_a_fixed_batch(run_config):
    _, (train, _, _), model = build(run_config)
    losses = train_steps(model, next(iter(train)), 8, lr=0.03)
    assert losses[-1] < 0.8 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))


def test_trainable_features_switch_freezes_only_the_raw_tables(run_config):
    _, (train, _, _), trained = build(run_config)
    _, _, frozen = build(run_config, trainable_features=False)
    names = {name for name, _ in trained.named_parameters()}
    assert names == {name for name, _ in frozen.named_parameters()}
    changed = {name for name, p in trained.named_parameters() if p.requires_grad}
    assert changed - {name for name, p in frozen.named_parameters() if p.requires_grad} == {
        "features.image", "features.text"}
    batch = next(iter(train))
    for model in (trained, frozen):
        model.train()
        model.calculate_loss(batch).backward()
    assert trained.features["image"].grad.abs().sum() > 0
    assert frozen.features["image"].grad is None
    # the kNN graphs come from the raw features in both cases and stay fixed
    assert torch.equal(trained.item_graphs["text"].to_dense(), frozen.item_graphs["text"].to_dense())


@pytest.mark.slow
def test_mgcn_beats_popularity(tmp_path):
    runs = train_each(tmp_path, ["MGCN", "Pop"], "synthetic", epochs=8)
    assert runs["MGCN"]["best_valid_result"]["recall@20"] > 1.5 * runs["Pop"]["best_valid_result"]["recall@20"]
