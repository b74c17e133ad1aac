"""The symbols costs are written in, and the bridge from FX fake-tensor shapes to sympy.

``L`` is the prefill sequence length (the symbolic ``seq`` dim of the captured prefill),
``K`` the keys a prefill attention sees (``L`` itself, except in chunked prefill where a
chunk of ``L`` queries attends to ``K`` earlier keys), and ``C`` the KV-cache capacity
(a concrete number in the captured program, made symbolic here so one capture prices every
target length).  ``at(expr, L=...)`` evaluates with ``K = L`` and ``C = L`` unless told.
"""

from __future__ import annotations

import math

import sympy
import torch

L = sympy.Symbol("L", positive=True, integer=True)
K = sympy.Symbol("K", positive=True, integer=True)
C = sympy.Symbol("C", positive=True, integer=True)
SYMBOLS = (L, K, C)
ZERO = sympy.Integer(0)


def dim_expr(d, rename: dict) -> sympy.Expr:
    """One dimension (an int or a SymInt) as a sympy expression over lcc's symbols."""
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return expr.xreplace({s: rename.get(s, s) for s in expr.free_symbols})
    return sympy.Integer(int(d))


def itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize if hasattr(dtype, "itemsize") else torch.empty((), dtype=dtype).element_size()


def prod(xs) -> sympy.Expr:
    out = sympy.Integer(1)
    for x in xs:
        out = out * x
    return out


def substitute(expr, L_=None, K_=None, C_=None) -> sympy.Expr:
    """Replace the symbols given (numbers or expressions); ``K`` and ``C`` default to ``L``."""
    L_ = L if L_ is None else L_
    K_ = L_ if K_ is None else K_
    C_ = L_ if C_ is None else C_
    return sympy.sympify(expr).xreplace({L: L_, K: K_, C: C_})


def at(expr, L_: int, K_: int | None = None, C_: int | None = None) -> float:
    """Evaluate at numbers: ``K`` and ``C`` default to ``L``."""
    value = substitute(expr, L_, K_, C_)
    return float(value) if value.is_number else float(value.evalf())


def compile_expr(expr):
    """A fast numeric function ``f(L, K, C) -> float`` of an expression."""
    expr = sympy.sympify(expr)
    if expr.is_number:
        value = float(expr)
        return lambda *_: value
    return sympy.lambdify(SYMBOLS, expr, modules=[{**_TORCH_INTEGER_FUNCTIONS, "floor": math.floor,
                                                   "ceiling": math.ceil, "Min": min, "Max": max}, "math"])


# the integer functions torch.export's symbolic shapes write (a context-parallel cache holds ceil(C / N) slots)
_TORCH_INTEGER_FUNCTIONS = {"FloorDiv": lambda a, b: math.floor(a / b), "CleanDiv": lambda a, b: math.floor(a / b),
                            "CeilDiv": lambda a, b: math.ceil(a / b), "IntTrueDiv": lambda a, b: a / b,
                            "FloorToInt": math.floor, "CeilToInt": math.ceil, "PythonMod": lambda a, b: a % b,
                            "Mod": lambda a, b: a % b, "PowByNatural": lambda a, b: a ** b}


def pretty(expr, digits: int = 4) -> str:
    """A short formula: expanded in ``L`` with floats rounded, e.g. ``1.36e+8*L + 1.08e+4*L**2``."""
    expr = sympy.expand(substitute(expr))
    if expr.is_polynomial(L):
        poly = sympy.Poly(expr, L)
        terms = []
        for (power,), coeff in sorted(poly.terms(), reverse=True):
            c = float(coeff)
            if c == 0:
                continue
            cs = f"{c:.{digits}g}"
            terms.append(cs if power == 0 else f"{cs}*L" if power == 1 else f"{cs}*L**{power}")
        return " + ".join(reversed(terms)).replace("+ -", "- ") or "0"
    return str(sympy.N(expr, digits))
