"""The documentation cannot drift: every command in README.md and docs/*.md is extracted and
either run here (fast ones in the default set with a 1-epoch override on a small synthetic
dataset, full ones under ``slow``) or listed in NOT_HERE with the reason it cannot run on a CI
machine. A command in none of the three classes, or in two, fails ``test_every_command_is_in_exactly_one_class``;
a class entry that no page holds any more fails it too. Every command of a repository script
(``run_recbole_mm.py``, ``benchmarks/*.py``, ``python -m recbole_mm...``) is also checked
statically: the script exists, each ``--flag`` is one it defines (or, for
``run_recbole_mm.py``, a config key some default knows), each ``--config_files`` file exists and
each ``--model`` is registered.

Fenced ```sh blocks hold the commands (a trailing ``\\`` continues a line, ``#`` starts a
comment, ``&&`` separates commands); inline `python ...` spans in the prose count too.
"""
import ast
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(path, REPO_ROOT)
                               for path in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))
SHELL_LANGS = {"sh", "bash", "shell", "console"}
SMALL_SYNTHETIC = "--synthetic_generator={'seed': 7, 'n_users': 200, 'n_items': 150}"
README_MAX_LINES = 150

# Run in the default set: config overrides (--epochs=1, the small synthetic dataset in a
# temporary folder) are put in place of the command's own.
FAST = {
    "python run_recbole_mm.py --model=LIRDRec --dataset=synthetic",
    "python run_recbole_mm.py --model=BPR --dataset=synthetic",
    "python run_recbole_mm.py --model=VBPR --dataset=synthetic --learning_rate=0.01 --epochs=20",
    "python run_recbole_mm.py --model=VBPR --dataset=synthetic --epochs=5 --vbpr_bias=True",
    "python run_recbole_mm.py --model=LIRDRec --dataset=synthetic --config_files=properties/coldstart.yaml",
    "python -m recbole_mm.prepare --help",
    "python run_recbole_mm.py --hyper --help",
    "python benchmarks/zoo.py --help",
    "python benchmarks/reference_summary.py results/reference/synthetic.jsonl results/reference/sports.jsonl",
}

# Run as written under ``slow`` (CI's second pass), in a temporary folder whose dataset/ is
# shared by the module (the full synthetic dataset is generated there on first use).
# SLOW_OVERRIDES: the config keys replaced where the full command runs for too long.
SLOW = {
    "python run_recbole_mm.py --model=VBPR --dataset=synthetic",
    "python run_recbole_mm.py --model=VBPR --dataset=synthetic --epochs=5",
    "python run_recbole_mm.py --model=FREEDOM --dataset=synthetic --epochs=5",
    "python run_recbole_mm.py --model=FREEDOM --dataset=synthetic --config_files=properties/guider.yaml",
    "python run_recbole_mm.py --model=VBPR --dataset=synthetic --config_files=properties/guider.yaml",
    'python run_recbole_mm.py --model=FREEDOM --dataset=synthetic --config_files="properties/guider.yaml properties/noise.yaml"',
    'python run_recbole_mm.py --model=VBPR --dataset=synthetic --config_files="properties/noise.yaml properties/denoise_tce.yaml"',
    "python run_recbole_mm.py --model=VBPR --dataset=synthetic --nproc=2 --use_gpu=False",
    "python run_recbole_mm.py --hyper --model=VBPR --dataset=synthetic --epochs=5 --workers=2",
    "python run_recbole_mm.py --model=NFVLM --dataset=clip_synthetic --config_files=properties/nfvlm.yaml",
}
SLOW_OVERRIDES = {
    # 10,000 users x 40,000 items: up to 1000 epochs under early stopping, over 15 min on a CPU
    "python run_recbole_mm.py --model=NFVLM --dataset=clip_synthetic --config_files=properties/nfvlm.yaml":
        {"epochs": 2},
}

BABY = "needs MMRec's Baby folder in dataset/baby/ (not redistributable)"
GPUS = "needs several GPUs (and the Baby folder)"
CLUSTER = "needs a Ray cluster, several machines or several GPUs (and the Baby folder)"
INSTALL = "installs packages (.ci/run does it in a fresh environment)"
SUITE = "the test suite itself (.ci/run runs it)"
BENCH = "a benchmark: hours of CPU, and it rewrites a results/ table (its flags are checked statically)"
NOT_HERE = {
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": INSTALL,
    'pip install -e ".[test]"': INSTALL,
    'pip install "ray[tune]>=2.58,<3"': INSTALL,
    "pip install torch==2.13.0": INSTALL,
    'pip install -e ".[bench]"': INSTALL,
    'pip install -e ".[features]"': INSTALL,
    'pip install -e ".[scatter]"': INSTALL + "; builds torch-scatter, about 8 minutes",
    "python -m pytest -q -rs tests": SUITE,
    "python -m pytest -q -rs -m slow tests": SUITE,
    "python run_recbole_mm.py --model=LIRDRec --dataset=baby": BABY,
    "python run_recbole_mm.py --model=VBPR --dataset=baby --config_files=properties/mmrec_baby.yaml": BABY,
    "python run_recbole_mm.py --hyper --model=FREEDOM --dataset=baby": BABY,
    "python run_recbole_mm.py --hyper --model=VBPR --dataset=baby --params_file=hyper.test --epochs=100":
        BABY + " and a hyper.test file of one's own",
    "python run_recbole_mm.py --hyper --model=FREEDOM --dataset=baby --backend=ray --ray_num_cpus=8":
        BABY + " and Ray (installed over RecBole's pin)",
    "python run_recbole_mm.py --hyper --model=FREEDOM --dataset=baby --backend=ray --ray_address=auto": CLUSTER,
    "ray start --head --port=6379": CLUSTER,
    "ray start --address=<head-ip>:6379": CLUSTER,
    "python run_recbole_mm.py --model=FREEDOM --dataset=baby --gpu_id=0": "needs a GPU and the Baby folder",
    "python run_recbole_mm.py --model=FREEDOM --dataset=baby --nproc=4 --gpu_id=0,1,2,3": GPUS,
    "torchrun --nproc_per_node=4 run_recbole_mm.py --model=FREEDOM --dataset=baby --gpu_id=0,1,2,3": GPUS,
    "python run_recbole_mm.py --model=FREEDOM --dataset=baby --nproc=4 --gpu_id=0,1,2,3 --world_size=8 "
    "--ip=10.0.0.1 --port=29500 --group_offset=0": CLUSTER,
    "python run_recbole_mm.py --model=FREEDOM --dataset=baby --nproc=4 --gpu_id=0,1,2,3 --world_size=8 "
    "--ip=10.0.0.1 --port=29500 --group_offset=4": CLUSTER,
    "torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=10.0.0.1 --master_port=29500 "
    "run_recbole_mm.py --model=FREEDOM --dataset=baby --gpu_id=0,1,2,3": CLUSTER,
    "python -m recbole_mm.prepare --interactions reviews_Baby_5.json.gz --items meta_Baby.json.gz "
    "--name mybaby --data-path dataset": "needs Amazon's Baby review and meta dumps (downloads) and the encoders' weights",
    "python run_recbole_mm.py --model=FREEDOM --dataset=mybaby --data_path=dataset":
        "needs the folder the prepare command above writes",
    "python run_recbole_mm.py --model=VBPR --dataset=ml100k_text":
        "builds its features with the `features` extra and MiniLM's weights (test_prepare covers the builder)",
    "python -m recbole_mm.features.clip --items items.csv --out dataset/mydata --model openai/clip-vit-base-patch32":
        "needs an item table with images, the `features` extra and CLIP's weights",
    "python -m recbole_mm.features.vlm --items items.csv --cache dataset/mydata/vlm_descriptions.jsonl "
    "--model Qwen/Qwen2.5-VL-3B-Instruct --device cuda": "needs a GPU, the `vlm` extra and Qwen2.5-VL's weights",
    "python -m recbole_mm.features.text --items items.csv --descriptions dataset/mydata/vlm_descriptions.jsonl "
    "--out dataset/mydata": "needs the VLM descriptions above and the `features` extra",
    "python benchmarks/compare_reference.py --reference <MMRec checkout> --model FREEDOM --data dataset/synthetic "
    "--epochs 100 --out results/reference/synthetic.md": "needs a checkout of enoche/MMRec (and rewrites a results/ table)",
    "python benchmarks/sports_speed.py --inter <sports.inter> --models VBPR --skip-knn --epochs 2 --set noise_ratio=0.1":
        "needs MMRec's Sports interactions",
    "python benchmarks/sports_speed.py --inter <sports.inter> --models VBPR --skip-knn --epochs 2 --set guider=true "
    "noise_ratio=0.1 guider_teacher_pretrain_epochs=0 guider_warmup_epochs=0": "needs MMRec's Sports interactions",
    "python benchmarks/sports_speed.py --inter dataset/sports/sports.inter --models VBPR FREEDOM --skip-knn":
        "needs MMRec's Sports interactions",
    "python benchmarks/optimizer_speed.py --data-path /tmp/opt_speed/":
        "a timing benchmark: minutes on a quiet machine, meaningless on a loaded one",
    "python benchmarks/optimizer_speed.py": "a timing benchmark: minutes on a quiet machine, meaningless on a loaded one",
    "python benchmarks/zoo.py --jobs 1 --set epochs=30": BENCH,
    "python benchmarks/guider_noise.py --dataset synthetic --epochs 40 --models VBPR FREEDOM --methods plain GUIDER": BENCH,
    "python benchmarks/guider_ablation.py --dataset synthetic --epochs 40": BENCH,
    "python benchmarks/guider_noise.py --dataset synthetic --epochs 40 --models VBPR FREEDOM --noise 0.1 --seeds 2020 "
    "2021 2022 --methods plain GUIDER-DBPR GUIDER GUIDER+DBPR0.1 GUIDER+DBPR1 --table guider_ladder": BENCH,
    "python benchmarks/guider_any_student.py --set epochs=30 --jobs 2": BENCH,
    "python benchmarks/nfvlm_paper.py": BENCH,
    "OMP_NUM_THREADS=1 python benchmarks/guider_noise.py --dataset sports --data-path <scratch> --inter "
    "../shared/data/interactions/sports.inter --epochs 6 --noise 0.1 --seeds 2020 --models MGCN FREEDOM --methods "
    "plain GUIDER GUIDER-DBPR BOD --table guider_table2": "needs MMRec's Sports interactions; hours on two cores",
    "OMP_NUM_THREADS=1 python benchmarks/guider_noise.py --dataset sports --data-path <scratch> --inter "
    "../shared/data/interactions/sports.inter --epochs 6 --noise 0.1 --seeds 2020 2021 2022 --models VBPR --methods "
    "plain GUIDER-DBPR GUIDER GUIDER+DBPR0.1 GUIDER+DBPR1 --table guider_ladder": "needs MMRec's Sports interactions; "
    "hours on two cores",
}


# ---------------------------------------------------------------- extraction

def _strip_comment(line):
    """``line`` without a shell comment (a ``#`` at a word start, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _split_and(line):
    """The commands of ``a && b`` (outside quotes)."""
    parts, quote, start = [], None, 0
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif line.startswith("&&", index):
            parts.append(line[start:index])
            start = index + 2
    parts.append(line[start:])
    return [" ".join(part.split()) for part in parts if part.strip()]


def fenced_blocks(text):
    """(language, body, first line number) of each fenced block."""
    blocks, lines, index = [], text.split("\n"), 0
    while index < len(lines):
        match = re.match(r"^```\s*([\w+-]*)", lines[index])
        if match:
            end = index + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            blocks.append((match.group(1).lower(), "\n".join(lines[index + 1:end]), index + 2))
            index = end
        index += 1
    return blocks


def prose(text):
    """``text`` with its fenced blocks blanked out (line numbers kept)."""
    out, inside = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            inside = not inside
            out.append("")
        else:
            out.append("" if inside else line)
    return out


def shell_commands(body):
    commands, pending = [], ""
    for raw in body.split("\n"):
        line = _strip_comment(raw).rstrip()
        continued = line.endswith("\\")
        pending += " " + (line[:-1] if continued else line)
        if not continued:
            commands.extend(_split_and(pending))
            pending = ""
    return commands


def read(page):
    with open(os.path.join(REPO_ROOT, page), encoding="utf-8") as handle:
        return handle.read()


def extract(pages=PAGES):
    """{command: [where, ...]} for every command of ``pages``."""
    found = {}
    for page in pages:
        text = read(page)
        for lang, body, line in fenced_blocks(text):
            if lang in SHELL_LANGS:
                for command in shell_commands(body):
                    found.setdefault(command, []).append(f"{page}:{line}")
        for number, line in enumerate(prose(text), 1):
            for span in re.findall(r"`((?:python|pip|torchrun) [^`]*)`", line):
                for command in _split_and(span):
                    found.setdefault(command, []).append(f"{page}:{number}")
    return found


COMMANDS = extract()


def test_every_command_is_in_exactly_one_class():
    classes = {"FAST": FAST, "SLOW": SLOW, "NOT_HERE": set(NOT_HERE)}
    unclassified = {command: where for command, where in COMMANDS.items()
                    if not any(command in members for members in classes.values())}
    assert not unclassified, ("documented commands in no class: add each to FAST, SLOW or NOT_HERE "
                              f"(with the reason) in tests/test_docs.py: {unclassified}")
    twice = {command for command in COMMANDS if sum(command in members for members in classes.values()) > 1}
    assert not twice, f"commands in two classes: {twice}"
    stale = {command for members in [*classes.values(), SLOW_OVERRIDES] for command in members
             if command not in COMMANDS}
    assert not stale, f"classified commands that no page holds any more (remove them here): {stale}"
    assert set(SLOW_OVERRIDES) <= SLOW


def test_commands_are_in_fenced_blocks():
    """An indented code block would hide its commands from the extraction above."""
    hidden = []
    for page in PAGES:
        for number, line in enumerate(prose(read(page)), 1):
            if re.match(r"^ {4,}(python|pip|torchrun|ray) ", line):
                hidden.append(f"{page}:{number}: {line.strip()}")
    assert not hidden, f"put these in a fenced ```sh block: {hidden}"


# ---------------------------------------------------------------- static checks

def _defined_flags(path):
    """The quoted ``--flag`` strings of ``path`` and of the repository modules it imports
    (a shared parser such as ``recbole_mm/features/item_table.py``), and ``--help``."""
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    flags = set(re.findall(r"[\"'](--[A-Za-z][\w-]*)[\"']", source)) | {"--help"}
    for node in ast.walk(ast.parse(source)):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            candidate = os.path.join(REPO_ROOT, *name.split(".")) + ".py"
            if name.startswith("recbole_mm.") and os.path.isfile(candidate) and candidate != path:
                with open(candidate, encoding="utf-8") as handle:
                    flags |= set(re.findall(r"[\"'](--[A-Za-z][\w-]*)[\"']", handle.read()))
    return flags


def _script_of(argv):
    """(path of the repository script, its arguments), or (None, None) for other programs."""
    if argv[0] == "torchrun":
        index = next(i for i, arg in enumerate(argv) if arg.endswith(".py"))
        return os.path.join(REPO_ROOT, argv[index]), argv[index + 1:]
    if argv[0] != "python":
        return None, None
    if argv[1] == "-m":
        if not argv[2].startswith("recbole_mm"):
            return None, None
        return os.path.join(REPO_ROOT, *argv[2].split(".")) + ".py", argv[3:]
    return os.path.join(REPO_ROOT, argv[1]), argv[2:]


def _options(arguments):
    for argument in arguments:
        if argument.startswith("--"):
            key, _, value = argument[2:].partition("=")
            yield key, value


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_names_what_exists(command):
    argv = shlex.split(command)
    script, arguments = _script_of(argv)
    if script is None:
        return
    assert os.path.isfile(script), f"{command}: no {os.path.relpath(script, REPO_ROOT)}"
    if os.path.basename(script) != "run_recbole_mm.py":
        unknown = {f"--{key}" for key, _ in _options(arguments)} - _defined_flags(script)
        assert not unknown, f"{command}: {sorted(unknown)} not defined in {os.path.relpath(script, REPO_ROOT)}"
        return
    from recbole_mm.config import known_keys
    from recbole_mm.utils import get_model

    flags = _defined_flags(script) | _defined_flags(os.path.join(REPO_ROOT, "recbole_mm", "hyper.py"))
    for key, value in _options(arguments):
        assert f"--{key}" in flags or key in known_keys(), f"{command}: --{key} is no flag and no config key"
        if key == "model":
            get_model(value)  # raises for a name that is neither the plugin's nor RecBole's
        if key == "config_files":
            for name in value.split():
                assert os.path.isfile(os.path.join(REPO_ROOT, name)), f"{command}: no {name}"


# ---------------------------------------------------------------- running them

def _workspace(root, data):
    """A working folder that sees the repository's files at their documented relative paths
    (``results/`` itself is the folder's own: a search writes its tables under results/hyper/)."""
    os.makedirs(root, exist_ok=True)
    for name in ("run_recbole_mm.py", "properties", "benchmarks", os.path.join("results", "reference")):
        link = os.path.join(root, name)
        if not os.path.exists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.join(REPO_ROOT, name), link)
    if not os.path.exists(os.path.join(root, "dataset")):
        os.symlink(data, os.path.join(root, "dataset"))
    return root


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RECBOLE_MM_DEBUG", None)
    return env


def _run(argv, cwd, timeout):
    argv = [sys.executable if arg == "python" else arg for arg in argv]
    done = subprocess.run(argv, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} -> exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _override(argv, **values):
    """``argv`` with each ``--key=...`` of ``values`` replaced (RecBole refuses a key given twice)."""
    kept = [arg for arg in argv if arg.partition("=")[0][2:] not in values]
    return kept + [f"--{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return str(tmp_path_factory.mktemp("docs_small_data"))


@pytest.fixture(scope="module")
def full_data(tmp_path_factory):
    return str(tmp_path_factory.mktemp("docs_full_data"))


@pytest.mark.parametrize("command", sorted(FAST))
def test_fast_command_runs(command, small_data, tmp_path):
    argv = shlex.split(command)
    if argv[:2] == ["python", "run_recbole_mm.py"] and "--help" not in argv:
        argv = _override(argv, epochs=1, data_path=small_data, show_progress=False,
                         synthetic_generator=SMALL_SYNTHETIC.partition("=")[2])
    done = _run(argv, _workspace(str(tmp_path), small_data), timeout=300)
    if "--help" in argv:
        assert "usage:" in done.stdout
    elif argv[:2] == ["python", "run_recbole_mm.py"]:
        assert "test result:" in done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(SLOW))
def test_slow_command_runs(command, full_data, tmp_path):
    argv = _override(shlex.split(command), **SLOW_OVERRIDES.get(command, {}))
    _run(argv, _workspace(str(tmp_path), full_data), timeout=3600)


# ---------------------------------------------------------------- code blocks

def _blocks(lang):
    return [(page, line, body) for page in PAGES for block_lang, body, line in fenced_blocks(read(page))
            if block_lang == lang]


@pytest.mark.parametrize("page,line,body", _blocks("python"))
def test_python_blocks_compile(page, line, body):
    compile(body, f"{page}:{line}", "exec")


@pytest.mark.parametrize("page,line,body", _blocks("yaml"))
def test_yaml_blocks_parse(page, line, body):
    assert isinstance(yaml.safe_load(body), dict), f"{page}:{line}"


@pytest.mark.slow
def test_readme_python_example_runs(full_data, tmp_path):
    (page, line, body), = [block for block in _blocks("python") if block[0] == "README.md"]
    script = tmp_path / "example.py"
    script.write_text(body, encoding="utf-8")
    _run(["python", str(script)], _workspace(str(tmp_path), full_data), timeout=1800)


# ---------------------------------------------------------------- the README's shape

def test_readme_is_short_and_starts_with_the_two_commands():
    text = read("README.md")
    assert len(text.splitlines()) <= README_MAX_LINES, "move detail to docs/"
    order = [text.index(command) for command in (
        'pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install -e ".[test]" '
        "&& python run_recbole_mm.py --model=LIRDRec --dataset=synthetic",
        "python -m pytest -q -rs tests")]
    assert order == sorted(order)


def _model_rows(page):
    """The cells of the rows of ``page``'s first table whose header starts with ``| model |``."""
    lines = read(page).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    rows = []
    for line in lines[start + 2:]:  # header, rule
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.parametrize("page", ["README.md", os.path.join("docs", "models.md")])
def test_model_table_lists_exactly_the_registered_models(page):
    from recbole_mm import model as registry

    registered = set(registry.__all__) - {"MultiModalRecommender"}
    names = [cells[0].strip("`") for cells in _model_rows(page)]
    assert len(names) == len(set(names)), f"{page}: a model listed twice"
    assert set(names) == registered | {"any RecBole model"}, (
        f"{page}: missing {sorted(registered - set(names))}; "
        f"not registered {sorted(set(names) - registered - {'any RecBole model'})}")


def test_readme_model_switches_are_the_models_keys():
    for cells in _model_rows("README.md"):
        name, switch = cells[0], cells[-1]
        if name == "any RecBole model" or not switch:
            continue
        key = switch.strip("`").split(":")[0].strip()
        with open(os.path.join(REPO_ROOT, "recbole_mm", "properties", "model", f"{name}.yaml"), encoding="utf-8") as f:
            keys = set(yaml.safe_load(f) or {})
        assert key in keys, f"{name}: `{key}` is not a key of its yaml"


def test_every_docs_page_is_linked_and_starts_with_a_runnable_command():
    readme = read("README.md")
    links = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme))
    pages = set(PAGES) - {"README.md"}
    assert links == pages, f"README links {sorted(links)}, docs/ has {sorted(pages)}"
    for page in pages:
        text = read(page)
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines[0].startswith("# ") and lines[1].startswith("```"), f"{page}: title, then a command"
        lang, body, _ = fenced_blocks(text)[0]
        first = shell_commands(body)[0]
        assert lang in SHELL_LANGS and first in FAST | SLOW, f"{page} starts with {first!r}"
        for target in re.findall(r"\]\(([\w./-]+\.md)\)", text):
            assert os.path.isfile(os.path.normpath(os.path.join(REPO_ROOT, "docs", target))), f"{page}: {target}"


def test_no_path_of_the_development_machine():
    paths = ["README.md", os.path.join("results", "README.md"), os.path.join("results", "reference", "README.md")]
    paths += PAGES + glob.glob(os.path.join("benchmarks", "*.[mp][dy]"), root_dir=REPO_ROOT)
    paths += [path for path in glob.glob(os.path.join("results", "**", "*"), root_dir=REPO_ROOT, recursive=True)
              if path.endswith((".md", ".jsonl", ".log", ".txt"))]
    for folder in ("properties", "recbole_mm"):
        for root, _, files in os.walk(os.path.join(REPO_ROOT, folder)):
            paths += [os.path.relpath(os.path.join(root, name), REPO_ROOT) for name in files
                      if name.endswith((".py", ".md", ".yaml", ".txt", ".cfg"))]
    found = []
    for path in sorted(set(paths)):
        with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if "/work/" in line:
                    found.append(f"{path}:{number}")
    assert not found, f"local paths (use a placeholder such as <MMRec checkout>): {found}"
