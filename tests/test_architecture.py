"""The house rules of the code: layers (pyproject's import-linter contracts, also run by
`make lint`), no import cycle even through imports inside functions, empty package inits."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from .conftest import REPO

PACKAGE = REPO / "src" / "kidwhisper"


def _cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(imports.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in imports.get(node, ()):
                found.append(sorted(component))

    for node in sorted(imports):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_counting_imports_inside_functions():
    # grimp reads every import statement, inside functions too (not TYPE_CHECKING blocks).
    graph = grimp.build_graph("kidwhisper", exclude_type_checking_imports=True)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert _cycles(imports) == []


def test_package_inits_import_nothing():
    """Importing a registry (`kidwhisper.models.variants`) must not load the factory: no
    package `__init__` imports anything, so a module costs only its own imports."""
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        assert not imports, f"{init.relative_to(REPO)} imports something"


def test_layer_contract_catches_a_planted_import(tmp_path: Path):
    """A copy of the package with one lower-layer module importing a higher one breaks the
    layers contract (the same check `make lint` runs on the real tree)."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "kidwhisper", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    # import-linter is a dev dependency, installed beside this interpreter.
    run = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    env = {"PYTHONPATH": str(copy), "PATH": os.environ["PATH"]}
    kept = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    text = copy / "kidwhisper" / "data" / "text.py"
    text.write_text(text.read_text() + "\nfrom kidwhisper.training import loop  # planted\n")
    broken = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert broken.returncode != 0
    assert "kidwhisper.data.text -> kidwhisper.training.loop" in broken.stdout
