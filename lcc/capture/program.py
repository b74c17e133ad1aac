"""An lcc program: exported entry points plus the explicit KV-cache layout they share."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
import torch.fx

from lcc.models.spec import ModelSpec


@dataclass(frozen=True)
class CacheLayout:
    """The KV cache the entry points take and return: per layer K and V of [B, Hkv, capacity, D].

    A pass that changes the layout lists the tensors instead, in entry-point order, as
    ``tensors = ((name, shape, dtype), ...)`` (e.g. quantized codes, scales and a residual ring);
    ``shapes``, ``empty`` and ``bytes`` then describe those.  ``capacity`` stays the number of
    token positions the program was captured for.
    """

    batch: int
    capacity: int
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float32"
    kind: str = "plain"  # passes may change this: "ring", "quantized:...", ...
    tensors: tuple = ()  # ((name, shape, dtype), ...) when not plain K/V of ``dtype``

    def __post_init__(self):  # lists from a JSON manifest become tuples
        object.__setattr__(self, "tensors", tuple((n, tuple(s), d) for n, s, d in self.tensors))

    def shapes(self) -> list[tuple[int, ...]]:
        if self.tensors:
            return [s for _, s, _ in self.tensors]
        shape = (self.batch, self.kv_heads, self.capacity, self.head_dim)
        return [shape] * (2 * self.layers)

    def dtypes(self) -> list[str]:
        return [d for _, _, d in self.tensors] if self.tensors else [self.dtype] * (2 * self.layers)

    def empty(self, device="cpu") -> list[torch.Tensor]:
        """Fresh zero caches in entry-point order: k_0, v_0, k_1, v_1, ... (or ``tensors``)."""
        return [torch.zeros(s, dtype=getattr(torch, d), device=device) for s, d in zip(self.shapes(), self.dtypes())]

    def bytes(self) -> int:
        return sum(int(torch.Size(s).numel()) * getattr(torch, d).itemsize for s, d in zip(self.shapes(), self.dtypes()))


@dataclass(frozen=True)
class Program:
    """Entry points (``prefill``, ``decode``, and for diffs ``prefill_full``) as FX graph modules.

    ``prefill(input_ids[B,S], *cache) -> (logits[B,1,V], *cache)``;
    ``decode(input_ids[B,1], position[], *cache) -> (logits[B,1,V], *cache)``;
    ``prefill_full(input_ids[B,S], *cache) -> (logits[B,S,V], hidden[L+1,B,S,H], *cache)``;
    ``prefill_logits(input_ids[B,S], *cache) -> (logits[B,S,V], *cache)`` (perplexity).
    """

    spec: ModelSpec
    cache: CacheLayout
    entries: dict[str, torch.fx.GraphModule]
    passes: tuple[str, ...] = ()
    stage: str = "captured"
    meta: dict = field(default_factory=dict)

    def with_entries(self, entries: dict[str, torch.fx.GraphModule], **changes) -> "Program":
        return replace(self, entries=entries, **changes)

    def copy_graphs(self) -> dict[str, torch.fx.GraphModule]:
        """Fresh graphs over the same weights: passes edit these, never the originals."""
        return {name: copy_graph_module(gm) for name, gm in self.entries.items()}

    def nodes(self, target, entry: str = "prefill"):
        return [n for n in self.entries[entry].graph.nodes if n.op == "call_function" and n.target == target]


def copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A new GraphModule with a deep-copied graph that shares ``gm``'s parameters and buffers."""
    new = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph), class_name=type(gm).__name__)
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            setattr(new, attr, getattr(gm, attr))
    if hasattr(gm, "meta"):
        new.meta.update(gm.meta)
    return new
