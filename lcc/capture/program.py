"""An lcc program: exported entry points plus the explicit KV-cache layout they share."""

from __future__ import annotations

import contextlib
import contextvars
import copy
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.fx

from lcc.models.spec import ModelSpec
from lcc.ops.kv_cache import KVQuantFormat


@dataclass(frozen=True)
class RingCache:
    """A StreamingLLM cache: ``sinks`` first tokens kept for good plus a ring of the last ``window``."""

    sinks: int
    window: int


@dataclass(frozen=True)
class CacheLayout:
    """The KV cache the entry points take and return: per layer K and V of [B, Hkv, capacity, D].

    A pass that changes the layout says how in a typed field (``quant``: a quantized cache in
    that :class:`KVQuantFormat`; ``ring``: a sink + ring cache) and lists the tensors, in
    entry-point order, as ``tensors = ((name, shape, dtype), ...)``; ``shapes``, ``empty`` and
    ``bytes`` then describe those.  ``capacity`` stays the number of token positions the
    program was captured for.  ``to_dict`` / ``from_dict`` round-trip through JSON (the manifest).
    """

    batch: int
    capacity: int
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float32"
    quant: KVQuantFormat | None = None
    ring: RingCache | None = None
    tensors: tuple = ()  # ((name, shape, dtype), ...) when not plain K/V of ``dtype``

    def __post_init__(self):  # lists and dicts from a JSON manifest become tuples and records
        object.__setattr__(self, "tensors", tuple((n, tuple(s), d) for n, s, d in self.tensors))
        if isinstance(self.quant, dict):
            object.__setattr__(self, "quant", KVQuantFormat(**self.quant))
        if isinstance(self.ring, dict):
            object.__setattr__(self, "ring", RingCache(**self.ring))

    @property
    def plain(self) -> bool:
        """K and V of ``dtype`` per layer, as captured."""
        return self.quant is None and self.ring is None and not self.tensors

    @property
    def kind(self) -> str:
        """A one-word description for messages and reports: plain, quantized:<format>, sink-ring:sinks=..,window=.."""
        if self.quant is not None:
            return f"quantized:{self.quant}"
        if self.ring is not None:
            return f"sink-ring:sinks={self.ring.sinks},window={self.ring.window}"
        return "plain"

    def to_dict(self) -> dict:
        """JSON-able fields (``from_dict`` inverts it)."""
        return {"batch": self.batch, "capacity": self.capacity, "layers": self.layers, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "dtype": self.dtype,
                "quant": asdict(self.quant) if self.quant is not None else None,
                "ring": asdict(self.ring) if self.ring is not None else None,
                "tensors": [[n, list(s), d] for n, s, d in self.tensors]}

    @classmethod
    def from_dict(cls, d: dict) -> "CacheLayout":
        """The layout ``to_dict`` wrote; a manifest's older ``kind`` string (its typed fields say it) is dropped."""
        return cls(**{k: v for k, v in d.items() if k != "kind"})

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

    def example_inputs(self, entry: str, seq_len: int | None = None) -> tuple:
        """Example arguments of ``entry`` for ``torch.export``: zero ids (one token for decode, else
        ``seq_len``, default min(8, capacity)), decode's position, then an empty cache."""
        batch, cache = self.cache.batch, self.cache.empty()
        if entry == "decode":
            return (torch.zeros(batch, 1, dtype=torch.long), torch.tensor(0), *cache)
        return (torch.zeros(batch, seq_len or min(8, self.cache.capacity), dtype=torch.long), *cache)

    def dynamic_shapes(self, entry: str, name: str = "seq") -> tuple | None:
        """``torch.export`` dynamic shapes of ``entry``: the sequence length (dim ``name``, 2..capacity)
        of prefill-like entries; decode has none."""
        if entry == "decode":
            return None
        from torch.export import Dim

        seq = Dim(name, min=2, max=self.cache.capacity)
        return ({1: seq}, *[None] * len(self.cache.shapes()))


# set by :func:`graphs_not_run`: copies skip generating their Python code
_NOT_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("lcc_graphs_not_run", default=False)


@contextlib.contextmanager
def graphs_not_run():
    """Within it, :func:`copy_graph_module` (and so every pass's ``Program.copy_graphs``) makes graph modules
    that generate their Python code only when first run or read (torch's ``_LazyGraphModule``), for graphs that
    are walked or run but not exported before :func:`generate_code`: the planner prices each candidate from its
    graphs, and ``lcc compile`` runs each checked stage and exports only the last.  Generating the code of a
    30-layer model's entry took ~0.4 s a copy and a ``recompile``: a third of a plan's time."""
    token = _NOT_RUN.set(True)
    try:
        yield
    finally:
        _NOT_RUN.reset(token)


def generate_code(program: Program) -> Program:
    """``program`` with each entry's Python code generated now: graphs copied within :func:`graphs_not_run`
    generate it when first run, but ``torch.export`` reads the generated ``forward``'s signature first."""
    from torch.fx._lazy_graph_module import _LazyGraphModule

    for gm in program.entries.values():
        _LazyGraphModule.force_recompile(gm)
    return program


def copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A new GraphModule with a deep-copied graph that shares ``gm``'s parameters and buffers (lazily compiled
    within :func:`graphs_not_run`)."""
    if _NOT_RUN.get():
        from torch.fx._lazy_graph_module import _LazyGraphModule

        cls = _LazyGraphModule
    else:
        cls = torch.fx.GraphModule
    new = cls(gm, copy.deepcopy(gm.graph), class_name=type(gm).__name__)
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            setattr(new, attr, getattr(gm, attr))
    if hasattr(gm, "meta"):
        new.meta.update(gm.meta)
    return new
