"""Where each lcc op keeps its reference, its cost and the lowerings backends register.

Ops declare themselves here once (:func:`declare`); backends add lowerings with
:func:`register_lowering` and never touch an op's semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class OpDef:
    """One op of the vocabulary: its torch op, reference, cost function and per-backend lowerings."""

    name: str
    op: Any
    reference: Callable
    cost: Callable | None = None
    doc: str = ""
    lowerings: dict[str, Callable] = field(default_factory=dict)


_OPS: dict[str, OpDef] = {}


def declare(opdef: OpDef) -> OpDef:
    _OPS[opdef.name] = opdef
    return opdef


def ops() -> dict[str, OpDef]:
    return dict(_OPS)


def get(name: str) -> OpDef:
    return _OPS[name]


def register_lowering(op_name: str, backend: str, fn: Callable) -> None:
    """Register ``fn`` as backend ``backend``'s lowering of ``op_name`` (called by backends only)."""
    _OPS[op_name].lowerings[backend] = fn


def lowering(op_name: str, backend: str) -> Callable | None:
    return _OPS[op_name].lowerings.get(backend)


def reference_call(opdef: OpDef) -> Callable:
    """A plain function calling the op's reference with the schema's positional arguments (for tracing)."""
    import inspect

    names = [a.name for a in opdef.op._schema.arguments]
    accepted = set(inspect.signature(opdef.reference).parameters)

    def call(*args):
        return opdef.reference(**{n: a for n, a in zip(names, args) if n in accepted})

    call.__name__ = f"{opdef.name}_reference"
    return call


def eager_body(opdef: OpDef) -> Callable | None:
    """The Python function behind the custom op (its eager CPU semantics), if torch exposes it."""
    from torch._library import custom_ops

    return getattr(custom_ops.OPDEFS.get(opdef.op._schema.name), "_init_fn", None)
