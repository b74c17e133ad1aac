"""Where each lcc op keeps its reference, its cost, its implementations and the lowerings backends register.

Ops declare themselves here once (:func:`declare`). Everything that can execute or lower an
op is one record held by the op's entry, as lightning-thunder's ``ImplInfo``:

- :class:`Impl`: one implementation for an ``(algo, device)`` pair with a ``check`` that says
  why it does not apply to a call (or ``None``); op bodies call :func:`select` and never keep
  module-level dicts of their own. Kernels (Triton on cuda) add theirs with :func:`register_impl`.
- :class:`Lowering`: one backend's lowering of the op, the same record for every backend
  (``emit``, ``unsupported(args) -> reason | None``, ``how``, optional ``prepare``), added by
  the backend with :func:`register_lowering`. A backend never touches an op's semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


def _always(*args, **kwargs) -> str | None:
    return None


@dataclass(frozen=True)
class Impl:
    """One implementation of an op: ``fn`` runs it for ``algo`` on ``device`` when ``check`` returns None."""

    algo: str  # the name an op's ``algo`` argument selects ("auto", "flash", "reference", ...)
    device: str  # torch device type: "cpu", "cuda", or "*" for any
    fn: Callable
    check: Callable[..., str | None] = _always  # (the op's arguments) -> why it does not apply, or None
    source: str = ""  # who registered it (module), for reports


@dataclass(frozen=True)
class Lowering:
    """One backend's lowering of one op (the same record type for every backend).

    ``emit`` is what the backend's lowering machinery calls (an onnxscript translation, a Relax
    converter, a ``triton_op``, ...); ``unsupported(args)`` says why a node with these schema
    arguments must run as the op's reference decomposition instead (``None``: it lowers);
    ``how`` is the line the compile report prints; ``prepare`` optionally rewrites a node into
    the form ``emit`` expects before lowering.
    """

    emit: Callable | None
    unsupported: Callable[[dict], str | None] = _always
    how: str = ""
    prepare: Callable | None = None

    def __call__(self, *args, **kwargs):
        return self.emit(*args, **kwargs)


@dataclass
class OpDef:
    """One op of the vocabulary: its torch op, reference, cost, implementations and per-backend lowerings."""

    name: str
    op: Any
    reference: Callable
    cost: Callable | None = None
    doc: str = ""
    impls: list[Impl] = field(default_factory=list)
    lowerings: dict[str, Lowering] = field(default_factory=dict)


_OPS: dict[str, OpDef] = {}


def declare(opdef: OpDef) -> OpDef:
    _OPS[opdef.name] = opdef
    return opdef


def ops() -> dict[str, OpDef]:
    return dict(_OPS)


def get(name: str) -> OpDef:
    return _OPS[name]


def register_impl(op_name: str, impl: Impl) -> None:
    """Add ``impl`` to op ``op_name``; a later registration for the same (algo, device) is tried first.

    A module registering (algo, device) again replaces its own earlier record."""
    impls = _OPS[op_name].impls
    impls[:] = [i for i in impls if (i.algo, i.device, i.source) != (impl.algo, impl.device, impl.source)]
    impls.insert(0, impl)


def select(op_name: str, algo: str, device: str, *args, **kwargs) -> Impl | None:
    """The first implementation registered for (algo, device) (then (algo, "*")) whose check passes.

    ``args`` / ``kwargs`` are the op's arguments, handed to each candidate's ``check``.
    """
    impls = _OPS[op_name].impls
    for dev in (device, "*"):
        for impl in impls:
            if impl.algo == algo and impl.device == dev and impl.check(*args, **kwargs) is None:
                return impl
    return None


def register_lowering(op_name: str, backend: str, lowering: Lowering) -> None:
    """Register ``lowering`` as backend ``backend``'s lowering of ``op_name`` (called by backends only)."""
    if not isinstance(lowering, Lowering):
        raise TypeError(f"{backend} lowering of {op_name}: expected a registry.Lowering record, "
                        f"got {type(lowering).__name__}")
    _OPS[op_name].lowerings[backend] = lowering


def lowering(op_name: str, backend: str) -> Lowering | None:
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
    return _init_fn(opdef.op)


def cpu_body(op) -> Callable | None:
    """The Python function the custom op overload ``op`` runs on the CPU, when no CPU kernel of its own was
    registered; None for any other op (an aten op, a custom op with a CPU kernel).

    Calling it is the op's CPU semantics without the dispatcher's route to it, which wraps every call in
    ``torch._dynamo.disable``: that imports torch._dynamo on the first call (a second or more) and adds
    microseconds to each. The runtime calls CPU programs' lcc ops this way."""
    import torch

    body = _init_fn(op)
    if body is None or torch._C._dispatch_has_kernel_for_dispatch_key(op._schema.name, "CPU"):
        return None
    return body


def _init_fn(op) -> Callable | None:
    from torch._library import custom_ops

    schema = getattr(op, "_schema", None)
    return getattr(custom_ops.OPDEFS.get(schema.name), "_init_fn", None) if schema is not None else None
