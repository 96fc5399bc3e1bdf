"""The command line as a newcomer meets it: one-line errors (exit 2), Ctrl-C (exit 130), a short
console that says where the log and the checkpoint went."""
import io
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import run_recbole_mm as cli
from recbole_mm.errors import ConfigError
from tests.conftest import REPO_ROOT, top_level_imports

SCRIPT = os.path.join(REPO_ROOT, "run_recbole_mm.py")
SMALL = "--synthetic_generator={'seed': 7, 'n_users': 200, 'n_items': 150}"


def start(args, cwd, **kwargs):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("RECBOLE_MM_DEBUG", None)
    return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def test_config_mistakes_end_in_one_line_and_exit_status_2(tmp_path):
    cases = {  # the three run at once: each mostly waits for imports
        "noise": (["--noise_ratio=1.5"], "error: noise_ratio must be a number in [0, 1), got 1.5"),
        "model": (["--model=NoSuchModel"], "error: Unknown model 'NoSuchModel'. recbole_mm models: ["),
        "modality": (["--modalities=audio"], "error: VBPR needs modalities ['audio'] (config key modalities"),
    }
    running = {}
    for name, (args, _) in cases.items():
        (tmp_path / name).mkdir()
        running[name] = start(args, tmp_path / name)
    for name, (_, expected) in cases.items():
        status, stdout, stderr = finish(running[name])
        assert status == 2, stderr
        assert stderr.count("\n") == 1 and stderr.startswith(expected), stderr
        assert "Traceback" not in stderr and stdout == ""


def _raising(error):
    def run_recbole_mm(**kwargs):
        raise error

    return run_recbole_mm


def test_debug_shows_the_traceback(monkeypatch, capsys):
    import recbole_mm.quick_start

    monkeypatch.setattr(recbole_mm.quick_start, "run_recbole_mm", _raising(ConfigError("knn_k must be ...")))
    assert cli.main(["--model=VBPR"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == "error: knn_k must be ...\n"
    with pytest.raises(ConfigError):
        cli.main(["--model=VBPR", "--debug"])
    monkeypatch.setenv("RECBOLE_MM_DEBUG", "1")
    with pytest.raises(ConfigError):
        cli.main(["--model=VBPR"])


def test_other_errors_keep_their_traceback(monkeypatch):
    import recbole_mm.quick_start

    monkeypatch.setattr(recbole_mm.quick_start, "run_recbole_mm", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError):
        cli.main([])


def test_ctrl_c_is_one_line_and_exit_status_130(monkeypatch, capsys):
    import recbole_mm.quick_start

    monkeypatch.setattr(recbole_mm.quick_start, "run_recbole_mm", _raising(KeyboardInterrupt()))
    assert cli.main([]) == cli.EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err  # read once: a second read returns nothing
    assert err.startswith("interrupted") and "Traceback" not in err
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug"])


def test_loose_arguments_are_named(capsys):
    assert cli.main(["--epochs", "2"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.startswith("error: unrecognised argument(s) --epochs 2: write config keys as")


def test_console_is_short_and_says_where_everything_went(tmp_path):
    status, stdout, stderr = finish(start(["--model=FREEDOM", "--epochs=1", SMALL], tmp_path))
    assert status == 0, stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in stdout.splitlines())
    log_file, checkpoint = lines["log (config, every epoch, results)"], lines["checkpoint"]
    assert os.path.isfile(tmp_path / log_file) and os.path.isfile(tmp_path / checkpoint)
    assert "np." not in stdout
    assert "FREEDOM on synthetic: 200 users" in stderr and "fixed x_label split" in stderr
    assert "Warning" not in stderr, "RecBole's GradScaler, read-only-array and torch's sparse-check warnings are fixed"
    assert "General Hyper Parameters" not in stderr and "Trainable parameters" not in stderr
    with open(tmp_path / log_file, encoding="utf-8") as handle:
        log = handle.read()
    assert "General Hyper Parameters" in log and "Trainable parameters" in log, "the dumps go to the file"
    assert "'split': {'x_label': 'fixed: 0/1/2 = train/valid/test'}" in log
    assert "np.float64" not in log and "test result" in log


def test_file_only_records_reach_the_console_only_when_verbose(run_config, monkeypatch, tmp_path):
    from recbole_mm.config import Config
    from recbole_mm.quick_start import FILE_ONLY, init_logging, log_file_path

    root = logging.getLogger()
    config = Config("VBPR", "synthetic", config_dict=run_config(state="INFO"))
    for verbose in (False, True):
        monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (pytest's own handlers aside)
        console = io.StringIO()
        monkeypatch.setattr(sys, "stderr", console)
        init_logging(config, verbose=verbose)
        root.info("the config dump", extra=FILE_ONLY)
        root.info("a summary")
        for handler in root.handlers:
            handler.flush()
        with open(log_file_path(), encoding="utf-8") as handle:
            assert "the config dump" in handle.read()
        for handler in root.handlers:
            handler.close()
        assert "a summary" in console.getvalue()
        assert ("the config dump" in console.getvalue()) is verbose


@pytest.mark.slow
def test_verbose_prints_recbole_dumps_on_the_console(tmp_path):
    status, _, stderr = finish(start(["--epochs=1", SMALL, "--verbose"], tmp_path))
    assert status == 0, stderr[-2000:]
    assert "General Hyper Parameters" in stderr and "Trainable parameters" in stderr


@pytest.mark.slow
def test_a_real_ctrl_c_during_training(tmp_path):
    # a test run started in the background (nohup, `&`) ignores SIGINT, and a child inherits
    # that: give the child the default disposition, as a terminal's foreground job has
    run = start(["--epochs=1000", "--stopping_step=1000", SMALL], tmp_path,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    seen = ""
    while "epoch 0 training" not in seen and time.time() < deadline:
        seen += run.stderr.readline()
    assert "epoch 0 training" in seen, seen
    run.send_signal(signal.SIGINT)
    status, _, stderr = finish(run, timeout=60)
    assert status == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted; the log so far: log/VBPR/")


# modules benchmarks/ imports that are not packages to install: its own scripts and the
# reference code that benchmarks/reference_runner.py runs from an MMRec checkout
# torch_dct: probed by reference_runner.py inside the reference implementation's own venv (a
# stand-in is installed there when it is missing), never imported by recbole_mm; torch_geometric:
# the reference code's, which vlif_bisect.py loads from the reference venv
BENCHMARK_LOCAL_MODULES = {"benchmarks", "ablation_table", "guider_noise", "recbole_mm", "utils", "torch_dct", "torch_geometric",
                           "sparsesvd"}  # shimmed by reference_runner when absent (the reference code imports them)
IMPORT_TO_REQUIREMENT = {"yaml": "pyyaml", "torch_scatter": "torch-scatter", "PIL": "pillow"}


def test_benchmark_imports_are_declared_requirements():
    import re

    with open(os.path.join(REPO_ROOT, "setup.py"), encoding="utf-8") as handle:
        declared = {re.split(r"[<>=\[ ]", requirement)[0].lower()
                    for requirement in re.findall(r'"([A-Za-z][\w\-]*(?:[<>=][^"]*)?)"', handle.read())}
    folder = os.path.join(REPO_ROOT, "benchmarks")
    local = BENCHMARK_LOCAL_MODULES | {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}
    imported = top_level_imports(folder)
    third_party = {module for module in imported if module not in sys.stdlib_module_names and module not in local}
    assert "matplotlib" in third_party
    missing = {IMPORT_TO_REQUIREMENT.get(module, module).lower() for module in third_party} - declared
    assert not missing, f"declare {sorted(missing)} in setup.py (install_requires or the bench extra)"


def test_readme_and_ci_say_how_to_get_the_cpu_build_and_the_bench_extra():
    for name in ("README.md", os.path.join(".ci", "run")):
        with open(os.path.join(REPO_ROOT, name), encoding="utf-8") as handle:
            text = handle.read()
        assert "--index-url https://download.pytorch.org/whl/cpu" in text, name
        assert "`torch==2.13.0` is the CPU build" not in text, name
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as handle:
        assert 'pip install -e ".[bench]"' in handle.read()


def test_a_config_key_that_prefixes_a_flag_stays_a_config_key():
    """argparse would read --mode=global (PGL's key) as an abbreviation of --model."""
    args, extra = cli.parse_args(["--model=PGL", "--mode=global", "--data_path=here"])
    assert args.model == "PGL" and extra == ["--mode=global", "--data_path=here"]
