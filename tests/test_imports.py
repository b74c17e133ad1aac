"""The package's import structure: no lcc module imports another's private name, no module-level import cycles."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "lcc").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def test_no_lcc_module_imports_another_modules_private_name():
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcc") and node.module != name:
                offenders += [f"{name}: from {node.module} import {a.name}" for a in node.names
                              if re.match(r"_[^_]", a.name)]
    assert offenders == []


def test_no_import_cycles_between_lcc_modules():
    """Module-level imports only (an import inside a function runs after both modules exist)."""
    files = modules()
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcc"):
                subs = [f"{node.module}.{a.name}" for a in node.names]
                deps.update(s for s in subs if s in files)
                if not all(s in files for s in subs):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("lcc"))
        graph[name] = {d for d in deps if d in files and d != name}
    index, low, stack, on, cycles = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []
