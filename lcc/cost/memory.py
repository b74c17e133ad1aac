"""Memory of a program: weights, the KV cache by layout kind, and chunked prefill.

The KV cache's bytes come from a small table keyed by the layout's kind, read from its typed
fields (:func:`layout_kind`: ``plain``, ``quantized``, ``sink-ring``), so a pass that adds a
layout plugs its formula in with :func:`register_kv_layout`.  A kind without an entry is priced
from the program itself: the bytes of the entry point's cache inputs, their capacity dim made symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy
import torch

from lcc.capture.program import CacheLayout
from lcc.cost.symbols import C


@dataclass(frozen=True)
class KVLayoutCost:
    """bytes(layout, capacity) -> sympy bytes; capacity(layout, target_len) -> the capacity a target needs."""

    bytes: Callable[[CacheLayout, sympy.Expr], sympy.Expr]
    capacity: Callable[[CacheLayout, int], int] = lambda layout, target: target


def _plain(layout: CacheLayout, capacity) -> sympy.Expr:
    """K and V, [B, Hkv, capacity, D] per layer, at the cache dtype."""
    itemsize = getattr(torch, layout.dtype).itemsize
    return 2 * layout.layers * layout.batch * layout.kv_heads * capacity * layout.head_dim * itemsize


def _quantized(layout: CacheLayout, capacity) -> sympy.Expr:
    """KIVI / fp8 parts (codes, scales, zeros, fp16 residual ring) per layer, capacity symbolic."""
    fmt = layout.quant
    total = sympy.Integer(0)
    for which in ("k", "v"):
        for _, shape, dtype in fmt.part_specs(which, layout.batch, layout.kv_heads, capacity, layout.head_dim):
            total += sympy.Mul(*shape) * getattr(torch, dtype).itemsize
    return layout.layers * total


def _fixed(layout: CacheLayout, capacity) -> sympy.Expr:
    """A cache whose size does not grow with the context (a ring buffer): what the layout lists."""
    return sympy.Integer(layout.bytes())


KV_LAYOUTS: dict[str, KVLayoutCost] = {
    "plain": KVLayoutCost(_plain),
    "quantized": KVLayoutCost(_quantized),
    "sink-ring": KVLayoutCost(_fixed),
}


def register_kv_layout(kind: str, cost: KVLayoutCost) -> None:
    """Price cache layouts of ``kind`` (e.g. ``"quantized"`` for ``quantized:int8``) with ``cost``."""
    KV_LAYOUTS[kind] = cost


def layout_kind(layout: CacheLayout) -> str:
    """The key of ``layout``'s formula in KV_LAYOUTS, from its typed fields."""
    if layout.quant is not None:
        return "quantized"
    if layout.ring is not None:
        return "sink-ring"
    return "plain" if layout.plain else "listed"


def kv_layout_cost(layout: CacheLayout) -> KVLayoutCost | None:
    return KV_LAYOUTS.get(layout_kind(layout))


def kv_cache_bytes(layout: CacheLayout, cache_inputs: sympy.Expr | None = None, capacity=C) -> sympy.Expr:
    """The cache's bytes at ``capacity`` (a symbol by default): the layout's formula, else the program's inputs."""
    cost = kv_layout_cost(layout)
    if cost is not None:
        return sympy.sympify(cost.bytes(layout, capacity))
    if getattr(layout, "tensors", ()):  # listed tensors: a dim equal to the capacity grows with it
        total = sympy.Integer(0)
        for _, shape, dtype in layout.tensors:
            total += sympy.Mul(*[capacity if d == layout.capacity else d for d in shape]) * \
                getattr(torch, dtype).itemsize
        return total
    if cache_inputs is None:
        raise KeyError(f"no KV layout cost for kind {layout.kind!r} and no cache inputs to read it from")
    return sympy.sympify(cache_inputs).xreplace({C: capacity})


def capacity_for(layout: CacheLayout, target_len: int) -> int:
    """The cache capacity the program needs for ``target_len`` tokens (the target itself for a plain cache)."""
    cost = kv_layout_cost(layout)
    return cost.capacity(layout, target_len) if cost is not None else target_len
