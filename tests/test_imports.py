"""The package's import graph: no cycle anywhere, and the decoding core imports nothing above it.

Every ``import`` / ``from ... import`` of every module counts, at module level and inside functions (those run
too, just later); only imports under ``if TYPE_CHECKING:`` are left out, since they never run. Importing
``a.b.c`` also runs the ``__init__`` of ``a.b`` (and ``a``), so those package inits count as dependencies of the
importer, except packages the importer itself lives in (they are already initialising when it runs).
"""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import diffuspec
from diffuspec import extras

PACKAGE = Path(diffuspec.__file__).resolve().parent
#: What the decoding core may never import: it sits below all of them, and knows no concrete drafter or model.
ABOVE_DECODING = ("diffuspec.training", "diffuspec.evaluation", "diffuspec.datagen", "diffuspec.quickstart",
                  "diffuspec.cli", "diffuspec.drafters", "diffuspec.models", "diffuspec.loading")  # fmt: skip


def module_names(root: Path, name: str) -> dict[str, Path]:
    """Every module of the package at ``root``: dotted name -> file (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_imports(tree: ast.AST):
    """Import nodes anywhere in ``tree``, skipping the bodies of ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                yield from (n for child in node.orelse for n in _runtime_imports_of(child))
                continue
        yield from _runtime_imports_of(node)


def _runtime_imports_of(node: ast.AST):
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _runtime_imports(node)


def import_graph(root: Path, name: str) -> dict[str, set[str]]:
    """module -> the package modules whose code runs when it imports (see the module docstring)."""
    modules = module_names(root, name)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)} | {module}
        for target in targets:
            if target not in modules:
                continue
            graph[module].add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # package inits that importing the target runs
                parent = ".".join(parts[:i])
                if parent not in own_packages:
                    graph[module].add(parent)
        graph[module].discard(module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE, "diffuspec"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_hides_an_import_behind_type_checking():
    """A type-only import is where a cycle hides from the checker above: modules that need each other's types
    share a module below both instead."""
    hidden = sorted(
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if "TYPE_CHECKING" in path.read_text()
    )
    assert not hidden, f"type-only imports in {hidden}"


def test_decoding_imports_nothing_above_it():
    graph = import_graph(PACKAGE, "diffuspec")
    offending = sorted(
        (module, target)
        for module, targets in graph.items()
        if module.startswith("diffuspec.decoding")
        for target in targets
        if target.startswith(ABOVE_DECODING)
    )
    assert not offending, f"the decoding core imports drafters, models, training, evaluation or the CLI: {offending}"


def test_the_checker_sees_cycles_through_functions_and_package_inits(tmp_path):
    """The two tests above can fail: a cycle closed by an in-function import, and one through a package __init__."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from .b import g\n")
    (root / "b.py").write_text("from . import a\ng = 1\n")
    assert find_cycle(import_graph(root, "pkg")) == ["pkg.a", "pkg.b", "pkg.a"]

    (root / "b.py").write_text("g = 1\n")
    (root / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\n")
    assert find_cycle(import_graph(root, "pkg")) is None  # type-only imports never run

    (root / "sub" / "__init__.py").write_text("from .c import h\n")
    (root / "sub" / "c.py").write_text("from ..a import f\nh = 1\n")
    (root / "a.py").write_text("from .sub.c import h\n\ndef f():\n    pass\n")
    assert find_cycle(import_graph(root, "pkg")) == ["pkg.a", "pkg.sub", "pkg.sub.c", "pkg.a"]


# ---------------------------------------------------------------- optional dependencies


@pytest.mark.parametrize("command, extra", [(["quickstart", "--fast"], "train"), (["eval"], "eval")])
def test_a_command_without_its_extra_stops_at_once_naming_it(command, extra, monkeypatch, capsys):
    from diffuspec.cli import main

    real = importlib.util.find_spec
    hidden = set(extras.EXTRAS[extra])
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    assert main(command) == 2
    assert f"pip install 'diffuspec[{extra}" in capsys.readouterr().err


def test_the_training_package_without_its_extra_names_it():
    """A fresh interpreter in which accelerate cannot be imported: ``import diffuspec.training`` says what to install."""
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'accelerate' else real(name, *a)\n"
        "try:\n    import diffuspec.training\nexcept ImportError as error:\n    print(type(error).__name__, error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert out.startswith("MissingExtraError") and "pip install 'diffuspec[train]'" in out
