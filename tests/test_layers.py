"""The layout is the data flow: which layer may import which, no import cycles, the layers that
decide and report run without torch, and importing evalkit changes nothing in the process."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "evalkit"

# Layer -> the evalkit layers it may import (every import, lazy ones included). Top-level
# modules are layers of their own; `api`, `cli` and `pipelines` are the only ones that compose.
SHARED = {"errors", "files", "paths", "versions", "offline", "settings", "progress"}
ALLOWED = {
    "errors": set(), "files": {"errors"}, "paths": set(), "versions": set(), "offline": set(), "settings": set(),
    "progress": set(),
    "record": {"errors", "files"},
    "kinds": {"record", "errors", "files"},
    "inputs": {"kinds", "record"} | SHARED,
    "decide": {"record", "kinds"} | SHARED,
    "report": {"record", "decide", "kinds"} | SHARED,
    "engine": {"inputs", "kinds", "record"} | SHARED,
    "training": {"engine", "inputs", "record"} | SHARED,
    "pipelines": {"inputs", "training", "engine", "decide", "report", "record", "kinds"} | SHARED,
    "api": {"pipelines", "inputs", "training", "engine", "decide", "report", "record"} | SHARED,
    "cli": {"pipelines", "inputs", "training", "engine", "decide", "report", "record"} | SHARED,
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every evalkit module this file imports, at any depth of the code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evalkit"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("evalkit"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_follows_the_layer_rules():
    broken = []
    for module, targets in graph().items():
        here = layer(module)
        if here == "__init__":
            continue  # the package's lazy front door re-exports the api
        for target in targets:
            there = layer(target)
            if there != here and there != "__init__" and there not in ALLOWED[here]:
                broken.append(f"{module} -> {target}")
    assert not broken, broken


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt])
                            if nxt in trail else f"import cycle through {node} -> {nxt}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_decide_report_and_record_run_without_torch():
    found = run_python(
        "import sys, json, pkgutil, importlib, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())  # any import of torch now fails\n"
        "import evalkit.decide, evalkit.report, evalkit.record, evalkit.kinds\n"
        "names = [m.name for p in (evalkit.decide, evalkit.report, evalkit.kinds) "
        "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "assert 'torch' not in sys.modules\n"
        "print(json.dumps(sorted(names)))\n")
    assert "evalkit.decide.stats" in found and "evalkit.report.run_page" in found


def test_importing_evalkit_changes_nothing_in_the_process():
    found = run_python(
        "import os, sys, json\n"
        "before = dict(os.environ)\n"
        "import evalkit\n"
        "print(json.dumps({'env': dict(os.environ) == before, 'torch': 'torch' in sys.modules, "
        "'api': callable(evalkit.evaluate)}))\n")
    assert found == {"env": True, "torch": False, "api": True}
