"""Checks an exported program's JSON before torch deserialises it: nothing in it may name or run code.

torch's deserializer (``torch._export.serde``) resolves each node's target by walking
attribute names from ``torch`` / ``operator`` / ``math`` (``torch.os.system`` would
resolve), turns symbolic shape strings into expressions with ``sympy.sympify`` (which
evaluates Python) and compiles the program's guard code into a function. So an artifact's
graph is accepted only when every node target is an op of an allowed namespace or a plain
arithmetic function, every shape expression is arithmetic over shape symbols and torch's
own sympy functions, and it has no guard code. Anything else is refused with one line.
"""

from __future__ import annotations

import json
import re

from lcc.errors import UsageError

OP_NAMESPACES = ("aten", "lcc", "prims")
_OP_TARGET = re.compile(r"torch\.ops\.(%s)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+" % "|".join(OP_NAMESPACES))
PLAIN_TARGETS = frozenset(
    [f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq",
                                "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "pos", "abs")]
    + [f"torch.sym_{n}" for n in ("int", "float", "max", "min", "not", "ite", "sqrt", "sum")]
    + [f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")])
# names torch's deserializer gives sympy (torch.utils._sympy.functions and a few sympy builtins)
SYMPY_NAMES = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs",
    "floor", "ceiling", "sqrt", "oo", "zoo", "nan", "Integer", "Rational", "Float", "True", "False",
    # sympy's srepr form, in which torch writes expressions: Symbol('s70', positive=True, integer=True)
    "Symbol", "Add", "Mul", "Pow", "positive", "integer", "nonnegative", "real", "finite",
})
_EXPR_CHARS = re.compile(r"[A-Za-z0-9_+\-*/%(), .<>=!']*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_expr(text: str) -> str | None:
    if not _EXPR_CHARS.fullmatch(text) or "__" in text:
        return f"shape expression {text[:60]!r} is not plain arithmetic"
    for name in _IDENT.findall(text):
        if name not in SYMPY_NAMES and not re.fullmatch(r"[suc]\d+", name):
            return f"shape expression {text[:60]!r} names {name!r}"
    return None


def _problems(obj, key=None):
    """Yield a reason for each part of the JSON tree that could name or run code."""
    if isinstance(obj, dict):
        if "target" in obj and "inputs" in obj and isinstance(obj["target"], str):
            target = obj["target"]
            if not (_OP_TARGET.fullmatch(target) or target in PLAIN_TARGETS):
                yield f"node target {target[:80]!r} is not an op lcc emits"
        for k, v in obj.items():
            yield from _problems(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _problems(v, key)
    elif isinstance(obj, str) and key == "expr_str":
        why = _check_expr(obj)
        if why:
            yield why


def check_graph_json(data: bytes, where: str) -> bytes:
    """``data`` unchanged when it is a safe exported-program JSON; a usage error naming the problem otherwise."""
    load_graph_json(data, where)
    return data


def load_graph_json(data: bytes, where: str) -> dict:
    """The parsed JSON tree of ``data`` when it is a safe exported-program JSON; a usage error otherwise."""
    try:
        tree = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{where} is not JSON ({e}); recompile the artifact")
    if not isinstance(tree, dict) or "graph_module" not in tree:
        raise UsageError(f"{where} is not an exported program; recompile the artifact")
    if tree.get("guards_code"):
        raise UsageError(f"{where} carries guard code, which lcc never writes: refusing to load it")
    for key in (tree.get("range_constraints") or {}):
        why = _check_expr(key)
        if why:
            raise UsageError(f"{where}: {why}; refusing to load it")
    for why in _problems(tree):
        raise UsageError(f"{where}: {why}; refusing to load it")
    return tree
