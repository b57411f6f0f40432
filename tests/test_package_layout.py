"""The shape of the project: the package's import graph follows the data flow, notebooks are in sync
with their sources, and nothing points outside the repository."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from zoomdx_lib.workbook.runner import DEFAULT_NOTEBOOKS, REPO_ROOT, discover_notebooks, pair_differences

PACKAGE = REPO_ROOT / "zoomdx_lib"
# Rooms in data-flow order: a module may import from its own room or an earlier one, never a later one.
ORDER = {"": 0, "config": 0, "schema": 0, "geometry": 0, "protocol": 0, "io": 0,
         "data": 1, "model": 2, "rl": 3, "train": 4, "eval": 5, "workbook": 6}
MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _room(module: str) -> str:
    return module.split(".")[0] if module else ""


def _imports(module: str, path: Path):
    """(target module inside the package, line, inside a function?) for every intra-package import."""
    tree = ast.parse(path.read_text())
    package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    modules = _modules()
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(fn) if n is not fn)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[:len(package_parts) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("zoomdx_lib"):
                stem = node.module.removeprefix("zoomdx_lib").lstrip(".")
            else:
                continue
            targets = [f"{stem}.{a.name}".lstrip(".") for a in node.names]
            targets = [t if t in modules else stem for t in targets]
        elif isinstance(node, ast.Import):
            targets = [a.name.removeprefix("zoomdx_lib").lstrip(".") for a in node.names if a.name.startswith("zoomdx_lib")]
        else:
            continue
        for t in dict.fromkeys(targets):
            yield t, node.lineno, id(node) in in_function


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m, p) if t != m} for m, p in _modules().items()}


def test_every_module_lives_in_a_known_room():
    assert {_room(m) for m in _modules()} <= set(ORDER), sorted({_room(m) for m in _modules()} - set(ORDER))


def test_no_import_from_a_later_stage():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets if ORDER[_room(t)] > ORDER[_room(m)]]
    assert not upward, upward


def test_import_graph_has_no_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(u, stack):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif not state.get(v):
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])
    assert not cycles, cycles


def test_no_intra_package_import_hidden_in_a_function():
    hidden = [f"{m}:{line} imports {t}" for m, p in _modules().items() for t, line, inside in _imports(m, p) if inside]
    assert not hidden, hidden


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import and a planted cycle are found."""
    fake = tmp_path / "zoomdx_lib"
    (fake / "data").mkdir(parents=True)
    (fake / "eval").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "eval" / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("from ..eval.b import f\n")
    (fake / "eval" / "b.py").write_text("from ..data import a\n\ndef f():\n    from . import b\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = _graph()
    assert graph["data.a"] == {"eval.b"} and graph["eval.b"] == {"data.a"}
    assert [t for t, _, inside in _imports("eval.b", fake / "eval" / "b.py") if inside] == ["eval.b"]


def test_long_modules_say_why():
    long = [f"{m} ({n} lines)" for m, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and "long because" not in p.read_text()[:600].lower()]
    assert not long, f"modules over {MAX_LINES} lines must say 'long because ...' in their docstring: {long}"


def _project_files():
    for folder in ("zoomdx_lib", "notebooks", "tests"):
        for p in (REPO_ROOT / folder).rglob("*"):
            if p.suffix in (".py", ".ipynb") and ".ipynb_checkpoints" not in p.parts:
                yield p


def test_no_absolute_path_and_no_path_outside_the_repository():
    absolute = re.compile(r"""["'](/[A-Za-z0-9_.-]+){2,}""")
    outside = "/".join(["..", "shared"])   # the developers' shared folder: users do not have it
    bad = []
    for p in _project_files():
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if (absolute.search(line) and "http" not in line) or outside in line:
                bad.append(f"{p.relative_to(REPO_ROOT)}:{n}: {line.strip()[:80]}")
    assert not bad, bad


@pytest.mark.parametrize("source", [p for p in discover_notebooks(DEFAULT_NOTEBOOKS) if p.suffix == ".py"],
                         ids=lambda p: p.stem)
def test_notebook_pairs_are_in_sync_and_committed_without_outputs(source):
    import nbformat
    assert source.with_suffix(".ipynb").exists(), f"{source.name} has no paired .ipynb"
    assert pair_differences(source) == []
    nb = nbformat.read(str(source.with_suffix(".ipynb")), as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(params) == 1
    # papermill reads every parameter (name, default, help): what `papermill --help-notebook` shows
    from papermill.translators import PythonTranslator
    assigned = [t.id for node in ast.parse(params[0].source).body for t in getattr(node, "targets", [])]
    assert [p.name for p in PythonTranslator.inspect(params[0])] == assigned


def test_pair_check_notices_an_edit(tmp_path):
    import jupytext
    src = next(p for p in discover_notebooks(DEFAULT_NOTEBOOKS) if p.suffix == ".py")
    py, ipynb = tmp_path / src.name, tmp_path / src.with_suffix(".ipynb").name
    py.write_text(src.read_text())
    ipynb.write_text(src.with_suffix(".ipynb").read_text())
    assert pair_differences(py) == []
    nb = jupytext.read(py)
    nb.cells[-1].source += "\nprint('edited in JupyterLab only')"
    jupytext.write(nb, ipynb)
    assert pair_differences(py) == [f"cell {len(nb.cells)}: {ipynb.name} differs from {py.name}"]


def test_thread_count_comes_from_the_environment(monkeypatch):
    import torch
    from zoomdx_lib.workbook.rundir import torch_threads
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ZOOMDX_THREADS", "1")
        assert torch_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("ZOOMDX_THREADS", "two")
        with pytest.raises(ValueError, match="positive whole number"):
            torch_threads()
    finally:
        torch.set_num_threads(before)
