"""Damaged or wrong ``.npy`` feature files: one line naming the file and the problem
(issue 14, defect 8), instead of numpy's EOFError or its advice to allow pickles."""
import io
import pickle
import re

import numpy as np
import pytest
import torch

from recbole_mm.data import FeatureFileError
from recbole_mm.errors import DataError
from tests.test_dataset import _mini_folder, load

GOOD = np.arange(40, dtype=np.float32).reshape(10, 4)


def good_bytes():
    stream = io.BytesIO()
    np.save(stream, GOOD)
    return stream.getvalue()


def empty(path):
    path.write_bytes(b"")


def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(300))


def pickled_list(path):
    path.write_bytes(pickle.dumps(GOOD.tolist()))


def object_array(path):
    np.save(path, np.array([[1.0, None]] * 10, dtype=object), allow_pickle=True)


def truncated(path):
    path.write_bytes(good_bytes()[:-37])


def damaged_header(path):
    path.write_bytes(good_bytes()[:40])


def npz_archive(path):
    with open(path, "wb") as handle:
        np.savez(handle, text=GOOD)


def strings(path):
    np.save(path, GOOD.astype(str))


def complex_numbers(path):
    np.save(path, GOOD.astype(np.complex64))


def booleans(path):
    np.save(path, GOOD > 10)


CASES = [
    (empty, r"is empty \(0 bytes\)"),
    (random_bytes, r"is not an \.npy file"),
    (pickled_list, r"is not an \.npy file"),
    (object_array, r"holds Python objects \(dtype object\)"),
    (truncated, r"is truncated: its header says shape \(10, 4\) of float32 \(\d+ bytes with the header\) "
                r"but the file has \d+ bytes"),
    (damaged_header, r"has a damaged \.npy header"),
    (npz_archive, r"is an \.npz archive"),
    (strings, r"holds <U\d+ values; expected real numbers"),
    (complex_numbers, r"holds complex64 values; expected real numbers"),
    (booleans, r"holds bool values; expected real numbers"),
]


@pytest.mark.parametrize("write, problem", CASES, ids=[write.__name__ for write, _ in CASES])
def test_a_bad_feature_file_is_named_with_its_problem_in_one_line(tmp_path, run_config, write, problem):
    path = _mini_folder(tmp_path) / "text_feat.npy"
    write(path)
    with pytest.raises(FeatureFileError) as error:
        load(tmp_path, "mini", run_config, modality_files={"text": "text_feat.npy"})
    message = str(error.value)
    assert message.startswith(f"Modality 'text': {path} ")
    assert re.search(problem, message), message
    assert "\n" not in message and "allow_pickle" not in message
    assert isinstance(error.value, DataError) and isinstance(error.value, ValueError)


@pytest.mark.parametrize("variant", ["big_endian", "fortran_order", "float64"])
def test_unusual_but_valid_files_still_load(tmp_path, run_config, variant):
    path = _mini_folder(tmp_path) / "text_feat.npy"
    matrix = {"big_endian": GOOD.astype(">f4"), "fortran_order": np.asfortranarray(GOOD),
              "float64": GOOD.astype(np.float64)}[variant]
    np.save(path, matrix)
    dataset = load(tmp_path, "mini", run_config, modality_files={"text": "text_feat.npy"})
    token = dataset.id2token("item_id", 1)
    assert torch.equal(dataset.modality_features["text"][1], torch.from_numpy(GOOD[int(token)]))
