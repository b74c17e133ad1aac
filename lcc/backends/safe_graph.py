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


class _Checker:
    """Finds, while ``json.loads`` builds the tree, the first part of it that could name or run code.

    Called on each JSON object as it is decoded (``object_hook``), so the walk costs one call per object rather
    than a Python generator per value of a multi-megabyte graph: a node (an object with ``target`` and
    ``inputs``) must name an allowed target, and every string under an ``expr_str`` key (directly or in lists)
    must be plain shape arithmetic.
    """

    def __init__(self):
        self.problem: str | None = None

    def __call__(self, obj: dict) -> dict:
        if self.problem is None:
            target = obj.get("target")
            if isinstance(target, str) and "inputs" in obj and not (
                    _OP_TARGET.fullmatch(target) or target in PLAIN_TARGETS):
                self.problem = f"node target {target[:80]!r} is not an op lcc emits"
            elif "expr_str" in obj:
                self.problem = _first_bad_expr(obj["expr_str"])
        return obj


def _first_bad_expr(value) -> str | None:
    """Why the first string of ``value`` (a string, or lists of them; objects are checked on their own) is not
    plain shape arithmetic, or None."""
    if isinstance(value, str):
        return _check_expr(value)
    if isinstance(value, list):
        for v in value:
            why = _first_bad_expr(v)
            if why:
                return why
    return None


def check_graph_json(data: bytes, where: str) -> bytes:
    """``data`` unchanged when it is a safe exported-program JSON; a usage error naming the problem otherwise."""
    load_graph_json(data, where)
    return data


def load_graph_json(data: bytes, where: str) -> dict:
    """The parsed JSON tree of ``data`` when it is a safe exported-program JSON; a usage error otherwise."""
    checker = _Checker()
    try:
        tree = json.loads(data, object_hook=checker)
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
    if checker.problem:
        raise UsageError(f"{where}: {checker.problem}; refusing to load it")
    return tree
