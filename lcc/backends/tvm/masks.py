"""Mask predicates evaluated as Relax ops: each mask kind's portable predicate ``mod(q, kv, *args)``
(:mod:`lcc.ops.masks`), run on Relax expressions instead of torch tensors.

Those predicates are written with operators only (``& | ~ < <= > >= == != + - * // %``), so wrapping
each Relax expression in :class:`RelaxInt`, whose operators emit the matching Relax op, turns the
very predicate the reference uses into a Relax subgraph; nothing is re-implemented per mask kind.
"""

from __future__ import annotations

from tvm import relax

from lcc.ops.masks import MaskSpec


def _binary(op, swap=False):
    def method(self, other):
        a, b = self.expr, self._lift(other)
        if swap:
            a, b = b, a
        return RelaxInt(self.bb, self.bb.emit(op(a, b)))

    return method


class RelaxInt:
    """A Relax int64/bool tensor with Python operators, so mask predicates run on it unchanged."""

    __slots__ = ("bb", "expr")

    def __init__(self, bb: relax.BlockBuilder, expr: relax.Expr):
        self.bb, self.expr = bb, expr

    def _lift(self, other):
        if isinstance(other, RelaxInt):
            return other.expr
        if isinstance(other, bool):
            return relax.const(other, "bool")
        if isinstance(other, int):
            return relax.const(other, "int64")
        raise TypeError(f"mask predicates combine positions with ints only, got {type(other).__name__}")

    __add__ = _binary(relax.op.add)
    __radd__ = _binary(relax.op.add, swap=True)
    __sub__ = _binary(relax.op.subtract)
    __rsub__ = _binary(relax.op.subtract, swap=True)
    __mul__ = _binary(relax.op.multiply)
    __rmul__ = _binary(relax.op.multiply, swap=True)
    __floordiv__ = _binary(relax.op.floor_divide)
    __mod__ = _binary(relax.op.floor_mod)  # Python's % is floor modulo, as torch's remainder
    __lt__ = _binary(relax.op.less)
    __le__ = _binary(relax.op.less_equal)
    __gt__ = _binary(relax.op.greater)
    __ge__ = _binary(relax.op.greater_equal)
    __eq__ = _binary(relax.op.equal)  # type: ignore[assignment]
    __ne__ = _binary(relax.op.not_equal)  # type: ignore[assignment]
    __and__ = _binary(relax.op.logical_and)
    __rand__ = _binary(relax.op.logical_and, swap=True)
    __or__ = _binary(relax.op.logical_or)
    __ror__ = _binary(relax.op.logical_or, swap=True)

    def __invert__(self):
        return RelaxInt(self.bb, self.bb.emit(relax.op.logical_not(self.expr)))

    __hash__ = None  # type: ignore[assignment]


def portable_predicate(mask: str):
    """``(fn, args)`` of the mask kind's portable predicate, or None when its record says it has none."""
    spec = MaskSpec.parse(mask)
    if not spec.record.portable:
        return None
    return spec.record.mod, spec.kernel_args


def emit_mask(bb: relax.BlockBuilder, mask: str, q_pos: relax.Expr, kv_idx: relax.Expr) -> relax.Expr:
    """The boolean mask ``mask_mod(q_pos, kv_idx)`` (broadcasting) as Relax ops."""
    found = portable_predicate(mask)
    if found is None:
        raise NotImplementedError(f"mask {mask!r} has no portable predicate")
    fn, args = found
    return fn(RelaxInt(bb, q_pos), RelaxInt(bb, kv_idx), *args).expr
