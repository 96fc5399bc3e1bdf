"""RecBole's train batches, built without torch's per-index machinery (``DirectTrainDataLoader``)
and with one tensor gather per field (``MultiModalDataset.__getitem__``): the same batches,
row for row, epoch after epoch."""
import numpy as np
import pytest
import torch
from recbole.data.dataloader import TrainDataLoader
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_mm.data.dataloader import DirectTrainDataLoader
from recbole_mm.model import VBPR
from tests.conftest import build_model


def epochs_of(loader, n_epochs):
    return [[{field: values.clone() for field, values in batch.interaction.items()} for batch in loader]
            for _ in range(n_epochs)]


@pytest.mark.parametrize("shuffle", [True, False])
def test_direct_loader_gives_recboles_batches_epoch_after_epoch(run_config, shuffle):
    """Same rows, same order and the same sampled negatives as RecBole's loader over three
    epochs (the loader's generator and the global RNG advance alike), a ragged last batch included."""
    config, _, (train, _, _), _ = build_model(run_config(train_batch_size=700), VBPR)
    assert isinstance(train, DirectTrainDataLoader)
    ours = DirectTrainDataLoader(config, train._dataset, train._sampler, shuffle=shuffle)
    theirs = TrainDataLoader(config, train._dataset, train._sampler, shuffle=shuffle)
    init_seed(config["seed"], True)
    got = epochs_of(ours, 3)
    init_seed(config["seed"], True)
    expected = epochs_of(theirs, 3)
    assert [len(epoch) for epoch in got] == [len(epoch) for epoch in expected] == [len(theirs)] * 3
    assert len(theirs._dataset) % 700 != 0, "a ragged last batch"
    for epoch_got, epoch_expected in zip(got, expected):
        for batch_got, batch_expected in zip(epoch_got, epoch_expected):
            assert batch_got.keys() == batch_expected.keys()
            assert all(torch.equal(batch_got[field], batch_expected[field]) for field in batch_got)
    assert not torch.equal(got[0][0][config["ITEM_ID_FIELD"]], got[1][0][config["ITEM_ID_FIELD"]]) or not shuffle


def test_dataset_rows_by_array_index_equal_recboles_list_index(run_config):
    """A numpy, tensor or boolean index gathers the rows RecBole's ``Interaction`` gathers."""
    _, dataset, _, _ = build_model(run_config(), VBPR)
    frame = dataset.inter_feat
    index = np.array([5, 0, 17, 5, 3])
    for key in (index, torch.from_numpy(index)):
        rows = dataset.__getitem__(key, join=False)
        assert isinstance(rows, Interaction)
        for field in frame.columns:
            assert torch.equal(rows[field], frame[field][index.tolist()])
    mask = np.zeros(len(frame), dtype=bool)
    mask[[2, 9]] = True
    assert torch.equal(dataset.__getitem__(mask, join=False)[dataset.uid_field], frame[dataset.uid_field][[2, 9]])
