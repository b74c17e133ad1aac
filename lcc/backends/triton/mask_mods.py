"""The mask predicates of :mod:`lcc.ops.sparse_masks`, compiled into Triton.

Each portable predicate is re-bound to globals that see ``triton.language`` and wrapped
with ``triton.jit``: the kernel evaluates the *same function* the reference does.
``allowed`` dispatches on a constexpr mask id; a mask's integer parameters travel as
runtime scalars ``p0..p3`` (see :func:`mask_launch_args`).
"""

from __future__ import annotations

import types

import triton
import triton.language as tl

from lcc.ops import sparse_masks
from lcc.ops.masks import MaskSpec

MASK_IDS = {"full": 0, "causal": 1, "sliding": 2, "block-local": 3, "strided": 4, "fixed": 5,
            "dilated": 6, "global-local": 7}


def _jit(fn):
    scope = {"tl": tl, "triton": triton, "__name__": __name__}
    return triton.jit(types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__))


_full = _jit(sparse_masks.full_mod)
_causal = _jit(sparse_masks.causal_mod)
_sliding = _jit(sparse_masks.sliding_mod)
_block_local = _jit(sparse_masks.block_local_mod)
_strided = _jit(sparse_masks.strided_mod)
_fixed = _jit(sparse_masks.fixed_mod)
_dilated = _jit(sparse_masks.dilated_mod)
_global_local = _jit(sparse_masks.global_local_mod)


@triton.jit
def allowed(q, kv, MASK: tl.constexpr, p0, p1, p2, p3):
    """The mask predicate ``MASK`` on broadcast position tensors q [M, 1] and kv [1, N]."""
    if MASK == 0:
        a = _full(q, kv)
    elif MASK == 1:
        a = _causal(q, kv)
    elif MASK == 2:
        a = _sliding(q, kv, p0, p1)
    elif MASK == 3:
        a = _block_local(q, kv, p0, p1)
    elif MASK == 4:
        a = _strided(q, kv, p0, p1)
    elif MASK == 5:
        a = _fixed(q, kv, p0, p1, p2)
    elif MASK == 6:
        a = _dilated(q, kv, p0, p1, p2, p3)
    else:
        a = _global_local(q, kv, p0, p1, p2, p3)
    return a


def mask_launch_args(mask: str) -> tuple[int, tuple[int, int, int, int]]:
    """(constexpr mask id, four runtime integer parameters, zero-padded) for a mask spec."""
    spec = MaskSpec.parse(mask)
    if spec.kind not in MASK_IDS:
        raise NotImplementedError(f"no Triton predicate for mask kind {spec.kind!r}")
    _, args = sparse_masks.kernel_mod(spec)
    return MASK_IDS[spec.kind], tuple(args) + (0,) * (4 - len(args))
