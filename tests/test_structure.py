"""Package structure: every module imports on its own and without the feature-extraction extra
(transformers), module-level imports form no cycle, and the model registry is the explicit list
in ``recbole_mm/model/__init__.py``."""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

from recbole_mm.utils import UnknownModelError, available_models, get_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(REPO_ROOT, "recbole_mm")


def package_modules():
    """Dotted names of every module of recbole_mm (packages by their own name)."""
    names = []
    for folder, _, files in os.walk(PACKAGE_DIR):
        for file_name in sorted(files):
            if not file_name.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(folder, file_name), REPO_ROOT)[:-3].split(os.sep)
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def module_file(name):
    path = os.path.join(REPO_ROOT, *name.split("."))
    return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"


def module_level_imports(name, modules):
    """recbole_mm modules that executing module ``name`` imports at module level (statements
    outside any function or class body, including those under module-level if/try)."""
    tree = ast.parse(open(module_file(name), encoding="utf-8").read())
    is_package = module_file(name).endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    targets = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []) or [])

    visit(tree.body)
    edges = set()
    for target in targets:
        # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c; the importer's own packages
        # are already being initialised, so they add no edge
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                edges.add(prefix)
    return edges


def find_cycle(graph):
    """One cycle of ``graph`` (node -> set of nodes) as a list of nodes, or None."""
    state = {}

    def walk(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = walk(start, [start])
            if cycle:
                return cycle
    return None


def test_module_level_imports_are_acyclic():
    modules = set(package_modules())
    graph = {name: module_level_imports(name, modules) for name in modules}
    assert graph["recbole_mm.config"] >= {"recbole_mm.utils"}    # the walk sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


FORK_IMPORTS = textwrap.dedent("""
    import os, sys, traceback

    class BlockFeaturesExtra:
        \"\"\"The feature-extraction extra (transformers, Pillow, torchvision) is not installed.\"\"\"
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("transformers", "PIL", "torchvision"):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, BlockFeaturesExtra())
    import numpy, scipy.sparse, pandas, torch, recbole.data, recbole.trainer, recbole.config  # third-party only
    assert not [m for m in sys.modules if m.startswith("recbole_mm")]
    failed = []
    for name in sys.argv[1:]:
        pid = os.fork()
        if pid == 0:
            try:
                __import__(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        if os.waitpid(pid, 0)[1] != 0:
            failed.append(name)
    print("FAILED", failed)
    sys.exit(1 if failed else 0)
""")


def run_python(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT}, timeout=300)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_alone_without_the_features_extra():
    """Each module imported first, in a process where no recbole_mm module is loaded yet and
    transformers/Pillow/torchvision cannot be imported (the ``features`` extra: only the
    offline feature tools need it, and they import it when they run). For speed, each import
    runs in a fork of one interpreter that holds only the third-party libraries; the slow
    test below uses one fresh interpreter per module."""
    done = run_python("-c", FORK_IMPORTS, *package_modules(), "recbole_mm.no_such_module")
    # the one failure is the module that does not exist (the check can fail)
    assert "FAILED ['recbole_mm.no_such_module']" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("module", package_modules())
def test_module_imports_in_a_fresh_interpreter(module):
    done = run_python("-c", f"import {module}")
    assert done.returncode == 0, done.stderr[-3000:]


# ---------------------------------------------------------------------- model registry
def test_every_listed_model_is_found_by_name():
    import recbole_mm.model as package

    listed = [name for name in package.__all__ if name != "MultiModalRecommender"]
    assert available_models(plugin=True) == listed
    for name in listed:
        assert get_model(name) is getattr(package, name)
        assert get_model(name.lower()) is getattr(package, name)
        assert issubclass(get_model(name), package.MultiModalRecommender)


def test_every_model_file_is_registered():
    """A model file in recbole_mm/model/ whose class is missing from the registry fails here."""
    import recbole_mm.model as package

    registered = {cls.__module__ for cls in map(get_model, available_models(plugin=True))}
    shared = {"abstract_recommender", "layers", "loss", "__init__"}
    files = {f"recbole_mm.model.{name[:-3]}" for name in os.listdir(os.path.dirname(package.__file__))
             if name.endswith(".py") and name[:-3] not in shared}
    assert files == registered


@pytest.mark.parametrize("name", ["layers", "loss", "abstract_recommender", "MultiModalRecommender", "MLP",
                                  "ModalityGCN", "DenoisingBPRLoss", "GRCNContentBranch"])
def test_shared_code_in_model_is_not_a_model(name):
    assert name not in available_models(plugin=True)
    with pytest.raises(UnknownModelError):
        get_model(name)
