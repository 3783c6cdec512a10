"""The package's layering, read from its source (docs/design.md, "Layout"): no import cycles,
and none of the edges the design forbids."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hearproto"
AUDIO_LIBRARIES = {"librosa", "soundfile", "soxr"}
BOOK_LIBRARIES = {"nbformat", "papermill", "nbclient", "ipywidgets", "IPython", "matplotlib"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (absolute names; a package's submodule by its own name),
    leaving out ``if TYPE_CHECKING:`` blocks, and with ``top_level_only`` the imports inside
    functions."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skipped.update(id(n) for n in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in MODULES]
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(node.module)
    return names


def _graph() -> dict[str, set[str]]:
    return {name: {d for d in _imports(path) if d in MODULES and d != name}
            for name, path in MODULES.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _third_party(name: str) -> set[str]:
    return {m.split(".")[0] for m in _imports(MODULES[name]) if not m.startswith("hearproto")}


def test_the_reader_finds_every_module_and_edge():
    graph = _graph()
    assert {"hearproto.transforms", "hearproto.kernels.chunks", "hearproto.runner.tables",
            "hearproto.cli"} <= set(graph)
    assert "hearproto.transforms" in graph["hearproto.kernels.chunks"]
    assert "hearproto.frontend" in graph["hearproto.audio"]


def test_no_import_cycles():
    graph = _graph()
    for start in graph:
        assert start not in _reachable(graph, start), f"{start} imports itself through " + ", ".join(
            sorted(m for m in _reachable(graph, start) if start in _reachable(graph, m)))


def test_the_model_knows_nothing_of_how_its_prototypes_were_chosen():
    assert "hearproto.clustering" not in _reachable(_graph(), "hearproto.model")


def test_the_maths_imports_only_torch():
    for name in ("hearproto.transforms", "hearproto.melscale"):
        assert _third_party(name) <= {"__future__", "math", "dataclasses", "typing", "torch"}, name
        assert _graph()[name] <= {"hearproto.melscale"}, name


@pytest.mark.parametrize("name", ["hearproto.frontend", "hearproto.model", "hearproto.kernels",
                                  "hearproto.transforms"])
def test_the_model_and_front_end_never_touch_files_or_audio_libraries(name):
    graph = _graph()
    reached = _reachable(graph, name) | {name}
    assert not reached & {"hearproto.audio", "hearproto.data", "hearproto.viz"}, name
    assert not any(m.startswith("hearproto.runner") for m in reached), name
    for module in reached:
        assert not _third_party(module) & AUDIO_LIBRARIES, f"{name} reaches {module}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith(("hearproto.train",
                                                                       "hearproto.baselines"))])
def test_training_never_plots_nor_imports_the_runner(name):
    reached = _reachable(_graph(), name) | {name}
    assert not any(m.startswith("hearproto.runner") for m in reached), name
    assert "hearproto.viz" not in reached and "hearproto.explorer" not in reached, name
    for module in reached:
        assert not _third_party(module) & BOOK_LIBRARIES, f"{name} reaches {module}"


def test_the_cli_imports_only_the_standard_library_at_start():
    top = _imports(MODULES["hearproto.cli"], top_level_only=True)
    assert top <= {"__future__", "argparse", "sys", "pathlib", "hearproto"}, top


def test_pure_modules_load_without_the_audio_libraries():
    """In a fresh interpreter: the maths and the model import neither the audio libraries nor
    the module that reads files."""
    code = ("import sys, hearproto.transforms, hearproto.kernels, hearproto.model\n"
            "bad = {'librosa', 'soundfile', 'soxr', 'hearproto.audio', 'hearproto.data'}\n"
            "print(sorted(bad & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_lists_every_module_once():
    """README.md, "How the code is organised": one row per module of the tree."""
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("### How the code is organised", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `hearproto/")]
    tree = sorted(p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py"))
    assert sorted(rows) == tree and len(rows) == len(set(rows))
