"""ItemKNNCBF: scores against a dense rewrite of MMRec's formula (shrunk cosine, top-k rows,
R W), the chunked neighbour search, one modality, no training, and its refusal under GUIDER."""
import pytest
import torch

from recbole_mm.config import Config
from recbole_mm.data.graphs import knn_neighbours
from recbole_mm.errors import ConfigError
from recbole_mm.model.itemknncbf import ItemKNNCBF
from recbole_mm.trainer import get_trainer
from tests.conftest import build_model


def build(run_config, **overrides):
    config, _, loaders, model = build_model(run_config(**overrides), ItemKNNCBF)
    return config, loaders, model


def dense_mmrec_scores(model, users):
    """MMRec's ItemKNNCBF written out: dense shrunk-cosine I x I, top-k per row, R W."""
    features = torch.cat([model.modality_features[name] for name in model.modality_features], dim=1).float()
    norms = features.norm(dim=-1, keepdim=True)
    similarity = (features @ features.T) / (norms * norms.T + model.shrink)
    values, indices = torch.topk(similarity, model.knn_k, dim=-1)
    weights = torch.zeros_like(similarity).scatter_(-1, indices, values)
    history = torch.zeros(model.n_users, model.n_items)
    matrix = model.interaction_matrix
    history[torch.from_numpy(matrix.row).long(), torch.from_numpy(matrix.col).long()] = 1.0
    return (history @ weights)[users]


def test_full_sort_scores_are_mmrecs_dense_formula(run_config):
    _, loaders, model = build(run_config, knn_k=7, shrink=5.0)
    model.eval()
    interaction = next(iter(loaders[1]))[0]
    users = interaction[model.USER_ID]
    scores = model.full_sort_predict(interaction).view(len(users), -1)
    assert torch.allclose(scores, dense_mmrec_scores(model, users), atol=1e-5)
    pairs = model.predict({model.USER_ID: users, model.ITEM_ID: torch.full_like(users, 3)})
    assert torch.allclose(pairs, scores[:, 3], atol=1e-6)


def test_shrink_changes_the_neighbours_of_small_norm_items():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 8, generator=generator) * torch.rand(60, 1, generator=generator).pow(3) * 10
    plain, _ = knn_neighbours(features, 5)
    shrunk, values = knn_neighbours(features, 5, shrink=10.0)
    assert not torch.equal(plain, shrunk)
    norms = features.norm(dim=1)
    expected = (features @ features.T) / (torch.outer(norms, norms) + 10.0)
    assert torch.allclose(values, torch.topk(expected, 5, dim=1).values, atol=1e-5)
    small_chunks, _ = knn_neighbours(features, 5, budget_elements=60 * 7, shrink=10.0)
    assert torch.equal(small_chunks, shrunk), "chunking changes nothing"


def test_one_modality_uses_that_modality(run_config):
    _, loaders, model = build(run_config, modalities=["text"])
    assert list(model.modality_features) == ["text"]
    interaction = next(iter(loaders[1]))[0]
    users = interaction[model.USER_ID]
    scores = model.full_sort_predict(interaction).view(len(users), -1)
    assert torch.allclose(scores, dense_mmrec_scores(model, users), atol=1e-5)


def test_nothing_trains_and_guider_refuses_it(run_config):
    _, loaders, model = build(run_config)
    loss = model.calculate_loss(next(iter(loaders[0])))
    loss.backward()
    assert loss.item() == 0.0 and [name for name, _ in model.named_parameters()] == ["placeholder"]
    config = Config("ItemKNNCBF", "synthetic", None, run_config())
    with pytest.raises(ConfigError, match="ItemKNNCBF trains nothing"):
        get_trainer(config["MODEL_TYPE"], "ItemKNNCBF", guider=True)


def test_a_model_that_trains_nothing_runs_one_epoch_whatever_epochs_says(run_config):
    config, loaders, model = build(run_config, epochs=30)
    trainer = get_trainer(config["MODEL_TYPE"], "ItemKNNCBF")(config, model)
    passes = []
    trainer._train_epoch = lambda *args, **kwargs: passes.append(1) or 0.0
    trainer.fit(loaders[0], loaders[1], saved=False)
    assert trainer.epochs == 1 and len(passes) == 1


@pytest.mark.parametrize("bad", [{"knn_k": 0}, {"shrink": -1.0}])
def test_bad_values_are_refused(run_config, bad):
    with pytest.raises(ConfigError):
        build(run_config, **bad)
