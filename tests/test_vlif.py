"""DRAGON and VLIF: the fusion module, its losses and ablation switches, the homogeneous graphs."""
import pytest
import torch

from recbole_mm.model.dragon import DRAGON
from recbole_mm.model.vlif import TransformerBlock, VLIF, orthogonal_residual
from tests.conftest import build_model


def build(run_config, model_class=VLIF, **overrides):
    return build_model(run_config(**overrides), model_class)


def first_batch(loaders):
    return next(iter(loaders[0]))


def test_unique_visual_part_is_orthogonal_to_redundancy(run_config):
    _, _, _, model = build(run_config)
    model.branch_features()
    out = model._fusion_outputs
    v_unique, r = out["unique_visual"], out["redundancy"]
    cosine = (v_unique * r).sum(1).abs() / (v_unique.norm(dim=1) * r.norm(dim=1))
    assert cosine.max() < 1e-5
    # and the projection removes only the component along r
    v = torch.randn(100, 32)
    r = torch.randn(100, 32)
    residual = orthogonal_residual(v, r)
    along = (v * r).sum(1, keepdim=True) / (r * r).sum(1, keepdim=True) * r
    assert torch.allclose(residual, v - along, atol=1e-5)


@pytest.mark.parametrize("tokens", [1, 4])
def test_each_infonce_term_decreases_on_a_fixed_batch(run_config, tokens):
    _, _, loaders, model = build(run_config, fusion_tokens=tokens)
    batch = first_batch(loaders)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    items = model.ssl_item_ids(batch)
    history = []
    for _ in range(15):
        loss = model.calculate_loss(batch)
        history.append({name: term.item() for name, term in model.fusion_losses(items).items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert set(history[0]) == {"synergy", "redundancy"}
    for name in history[0]:
        assert history[-1][name] < 0.9 * history[0][name], (name, history[0][name], history[-1][name])


def test_single_token_attention_shortcut_equals_full_attention():
    torch.manual_seed(0)
    block = TransformerBlock(16, heads=2)
    x, context = torch.randn(7, 1, 16), torch.randn(7, 1, 16)
    query, keys = block.norm_attention(x), block.norm_attention(context)
    full = block.attention(query, keys, keys, need_weights=False)[0]
    assert torch.allclose(block.attend(query, keys), full, atol=1e-6)


def test_token_split_makes_attention_depend_on_the_query():
    """With one token the cross-attention output ignores the query; with k tokens it does not."""
    torch.manual_seed(0)
    block = TransformerBlock(8)
    context = torch.randn(1, 4, 8)
    a, b = block.attend(torch.randn(1, 1, 8), context), block.attend(torch.randn(1, 1, 8), context)
    assert not torch.allclose(a, b)
    single = context[:, :1]
    assert torch.allclose(block.attend(torch.randn(1, 1, 8), single), block.attend(torch.randn(1, 1, 8), single))


def copy_shared_parameters(source, target):
    """Load into ``target`` every parameter of ``source`` with the same name and shape."""
    own = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)
    return shared


def test_fusion_switches_change_only_what_they_name(run_config):
    models = {fusion: build(run_config, fusion=fusion)[3] for fusion in ("pid", "synergy", "weighted", "concat", "pooling")}
    for model in models.values():
        copy_shared_parameters(models["pid"], model)
        model.eval()
    parts = {name: set(n.split(".")[0] for n, _ in m.named_parameters()) for name, m in models.items()}
    assert "redundancy_encoder" in parts["pid"] and "redundancy_encoder" not in parts["synergy"]
    assert "synergy_encoder" in parts["synergy"] and "synergy_encoder" not in parts["weighted"]
    assert parts["weighted"] - parts["concat"] == {"user_modality_weight"}
    assert parts["concat"] == parts["pooling"]
    # the graphs are the same for every switch
    for model in models.values():
        assert torch.equal(model.item_graph.to_dense(), models["pid"].item_graph.to_dense())

    with torch.no_grad():
        pid, synergy = models["pid"].branch_features(), models["synergy"].branch_features()
        # pid vs synergy: only the visual branch's input (v' instead of v) and the text projection differ
        assert torch.allclose(pid["synergy"], synergy["synergy"], atol=1e-6)
        assert not torch.allclose(pid["image"][:, :8], synergy["image"][:, :8])
        assert set(models["synergy"].fusion_losses(torch.arange(1, 20))) == {"synergy"}

        weighted_users, weighted_items = models["weighted"].fuse(models["weighted"].branch_outputs())
        concat_users, concat_items = models["concat"].fuse(models["concat"].branch_outputs())
        pooled_users, pooled_items = models["pooling"].fuse(models["pooling"].branch_outputs())
    d = models["concat"].embedding_size
    assert torch.allclose(weighted_items, concat_items), "weighting touches users only"
    w = models["weighted"].user_modality_weight
    assert torch.allclose(weighted_users[:, :d], w[:, :1] * concat_users[:, :d], atol=1e-6)
    assert torch.allclose(weighted_users[:, d:], w[:, 1:] * concat_users[:, d:], atol=1e-6)
    assert torch.allclose(pooled_items, 0.5 * (concat_items[:, :d] + concat_items[:, d:]), atol=1e-6)
    assert torch.allclose(pooled_users, 0.5 * (concat_users[:, :d] + concat_users[:, d:]), atol=1e-6)


def test_fusion_tokens_must_divide_the_fusion_width(run_config):
    with pytest.raises(ValueError, match="not divisible"):
        build(run_config, fusion_tokens=5)


def test_dragon_scores_concatenated_weighted_branches_plus_homogeneous_graphs(run_config):
    _, _, loaders, model = build(run_config, DRAGON)
    model.eval()
    with torch.no_grad():
        outputs = model.branch_outputs()
        w = model.user_modality_weight
        users = torch.cat([w[:, :1] * outputs["image"][0], w[:, 1:] * outputs["text"][0]], dim=1)
        items = torch.cat([outputs["image"][1], outputs["text"][1]], dim=1)
        users = users + torch.sparse.mm(model.user_graph, users)
        items = items + torch.sparse.mm(model.item_graph, items)
        user_all, item_all = model.forward()
    assert torch.allclose(user_all, users, atol=1e-5) and torch.allclose(item_all, items, atol=1e-5)
    # the user-user graph is redrawn at every epoch start
    before = model.user_graph.to_dense()
    changed = False
    for _ in range(5):
        model.pre_epoch_processing()
        changed |= not torch.equal(before, model.user_graph.to_dense())
    assert changed


def test_dragon_loss_is_log2_bpr_plus_preference_and_weight_l2(run_config):
    _, _, loaders, model = build(run_config, DRAGON, reg_weight=0.5)
    batch = first_batch(loaders)
    users = batch[model.USER_ID]
    user_all, item_all = model.forward()
    u = user_all[users]
    diff = (u * item_all[batch[model.ITEM_ID]]).sum(-1) - (u * item_all[batch[model.NEG_ITEM_ID]]).sum(-1)
    expected = -torch.log2(torch.sigmoid(diff)).mean()
    expected = expected + 0.5 * ((model.branches["image"].preference[users] ** 2).mean()
                                 + (model.branches["text"].preference[users] ** 2).mean()
                                 + (model.user_modality_weight ** 2).mean())
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)


def test_fusion_checkpointing_gives_the_same_loss_and_gradients(run_config):
    grads = []
    for flag in (False, True):
        _, _, loaders, model = build(run_config, fusion_checkpoint=flag)
        batch = first_batch(loaders)
        torch.manual_seed(0)
        model.calculate_loss(batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
