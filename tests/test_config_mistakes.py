"""Config mistakes a newcomer makes: one ``error:`` line, exit status 2, before any data is loaded
(no dataset folder is created, nothing trains)."""
import logging

import pytest

import run_recbole_mm as cli
from recbole_mm.config import Config
from recbole_mm.data import create_dataset


def bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\nseed: 3\n")
    return ["--config_files=bad.yaml"]


def list_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- epochs\n- seed\n")
    return ["--config_files=list.yaml"]


def checkpoint_under_a_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    return [f"--checkpoint_dir={tmp_path / 'a_file' / 'saved'}"]


MISTAKES = [
    (lambda tmp: ["--topk=[0]"], "error: topk must be a list of integers >= 1, got [0]"),
    (lambda tmp: ["--valid_metric=foo@20"], "error: valid_metric must be <metric>@<k> with <metric> one of metrics"),
    (lambda tmp: ["--valid_metric=recall@30"], "and k one of topk [5, 10, 20, 50]"),
    (lambda tmp: ["--metrics=['Foo']"], "error: metrics: no metric named 'Foo'; RecBole's metrics are auc,"),
    (lambda tmp: ["--config_files=nothere.yaml"], "error: config file nothere.yaml does not exist"),
    (bad_yaml, "error: config file bad.yaml is not valid YAML at line 2: expected ',' or ']'"),
    (list_yaml, "error: config file list.yaml must hold 'key: value' lines at its top level; it holds a list"),
    (checkpoint_under_a_file, "cannot be created: "),
    (lambda tmp: ["--nproc=0"], "error: --nproc must be an integer >= 1"),
    (lambda tmp: ["--worker=-2"], "error: worker must be an integer >= 0, got -2"),
    (lambda tmp: ["--world_size=0"], "error: --world_size must be -1 (= --nproc) or >= --nproc (1), got 0"),
]


@pytest.mark.parametrize("make_args, message", MISTAKES)
def test_config_mistake_is_one_line_before_any_data(tmp_path, monkeypatch, capsys, make_args, message):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    status = cli.main(["--model=BPR", "--dataset=synthetic", f"--data_path={data}", *make_args(tmp_path)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_USAGE == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not data.exists() and not (tmp_path / "log").exists(), "nothing was loaded or trained"


def test_hyper_search_refuses_non_positive_workers(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--hyper", "--model=BPR", "--workers=-2"])
    assert stop.value.code == 2
    assert "error: --workers must be an integer >= 1, got -2" in capsys.readouterr().err


def test_an_empty_config_file_is_no_settings(tmp_path, run_config):
    (tmp_path / "empty.yaml").write_text("")
    config = Config("BPR", "synthetic", [str(tmp_path / "empty.yaml")], run_config(epochs=3))
    assert config["epochs"] == 3


def test_repeated_user_item_rows_are_counted_in_one_warning(tmp_path, caplog):
    folder = tmp_path / "dups"
    folder.mkdir()
    rows = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t0" for u in range(4) for i in range(4)]
    rows += ["0\t1\t0", "0\t1\t0", "2\t3\t2"]  # three repeats: twice in train, once train-and-test
    (folder / "dups.inter").write_text("\n".join(rows) + "\n")
    config = Config("BPR", "dups", config_dict={"data_path": str(tmp_path), "state": "WARNING"})
    with caplog.at_level(logging.WARNING):
        dataset = create_dataset(config)
    warnings = [r.getMessage() for r in caplog.records if "repeat a user–item pair" in r.getMessage()]
    assert len(warnings) == 1 and "3 of 19 rows repeat" in warnings[0] and "they are kept" in warnings[0]
    assert dataset.inter_num == 19
    caplog.clear()
    config = Config("BPR", "dups", config_dict={"data_path": str(tmp_path), "state": "WARNING", "rm_dup_inter": "first"})
    with caplog.at_level(logging.WARNING):
        create_dataset(config)
    assert not [r for r in caplog.records if "repeat a user–item pair" in r.getMessage()]
