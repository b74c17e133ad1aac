"""The mask kinds' portable predicates as Triton functions, handed to kernels as a ``tl.constexpr``.

Each kind's predicate (:mod:`lcc.ops.masks`) is re-bound to globals that see
``triton.language`` and wrapped with ``triton.jit``: the kernel evaluates the *same function*
the reference does.  A generated ``mask_<kind>(q, kv, p0, p1, p2, p3)`` adapts it to the
kernel's four runtime integer slots, and the flash kernel receives that function itself as its
``MASK`` constexpr (Triton specialises a kernel on a JITFunction argument and inlines the call),
so no mask ids or dispatch lists exist here: a kind registered anywhere, a test file included,
runs in the interpreter and compiles ahead of time exactly like the built-in ones.
"""

from __future__ import annotations

import functools
import inspect
import linecache
import re
import types

import triton
import triton.language as tl

from lcc.ops.masks import MaskSpec, mask_kinds

N_PARAMS = 4  # runtime integer parameters p0..p3 every kernel predicate takes


def _jit(fn):
    scope = {"tl": tl, "triton": triton, "__name__": __name__}
    return triton.jit(types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__))


@functools.lru_cache(maxsize=None)
def _predicate(name: str, mod) -> triton.runtime.JITFunction:
    n_args = len(inspect.signature(mod).parameters) - 2
    if n_args > N_PARAMS:
        raise NotImplementedError(f"mask kind {name!r}: its predicate takes {n_args} parameters, kernels {N_PARAMS}")
    fname = "mask_" + re.sub(r"\W", "_", name)
    params = ", ".join(f"p{i}" for i in range(N_PARAMS))
    call = ", ".join(["q", "kv"] + [f"p{i}" for i in range(n_args)])
    src = f"def {fname}(q, kv, {params}):\n    return PRED({call})\n"
    filename = f"<lcc mask {name}>"  # the source Triton reads back with inspect.getsource
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    scope = {"PRED": _jit(mod), "tl": tl, "triton": triton, "__name__": __name__}
    exec(compile(src, filename, "exec"), scope)
    return triton.jit(scope[fname])


def kernel_predicate(kind: str) -> triton.runtime.JITFunction:
    """The jitted ``mask_<kind>(q, kv, p0, p1, p2, p3)`` for a registered, portable mask kind."""
    record = mask_kinds()[kind]
    if not record.portable:
        raise NotImplementedError(f"no Triton predicate for mask kind {kind!r}: its predicate is not portable")
    return _predicate(record.name, record.mod)


def kernel_predicates() -> dict[str, triton.runtime.JITFunction]:
    """Every portable mask kind's kernel predicate (the AOT matrix compiles each)."""
    return {name: kernel_predicate(name) for name, kind in mask_kinds().items() if kind.portable}


def mask_launch_args(mask: str) -> tuple[triton.runtime.JITFunction, tuple[int, ...]]:
    """(the constexpr predicate, four runtime integer parameters, zero-padded) for a mask spec."""
    spec = MaskSpec.parse(mask)
    args = spec.kernel_args
    return kernel_predicate(spec.kind), args + (0,) * (N_PARAMS - len(args))
