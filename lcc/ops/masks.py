"""Attention masks as predicates, FlexAttention-style.

A mask is named by a spec string such as ``causal`` or ``sliding:window=4096,sinks=4``.
Its meaning is one predicate ``mask_mod(q_idx, kv_idx) -> bool`` over *absolute*
positions (queries are aligned to the end of the valid keys).  The same predicate
drives the reference implementation, the kernels' block maps and the cost model.
New patterns register a factory with :func:`register_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskKind:
    """A family of masks: its parameter names with defaults, and a predicate factory."""

    name: str
    params: dict[str, int]
    factory: Callable[..., MaskMod]
    doc: str = ""
    causal: bool = True
    # key_ranges(q_lo, q_hi, n_keys, **params) -> [(lo, hi), ...]: half-open key intervals that hold every
    # key any query in [q_lo, q_hi] may see (a superset is fine; the predicate still decides). None: all keys.
    key_ranges: Callable[..., list[tuple[int, int]]] | None = None


_MASKS: dict[str, MaskKind] = {}


def register_mask(kind: MaskKind) -> MaskKind:
    _MASKS[kind.name] = kind
    return kind


def mask_kinds() -> dict[str, MaskKind]:
    return dict(_MASKS)


@dataclass(frozen=True)
class MaskSpec:
    """A parsed mask spec: kind plus integer parameters (defaults filled in)."""

    kind: str
    params: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def parse(text: str) -> "MaskSpec":
        kind, _, rest = text.partition(":")
        kind = kind.strip()
        if kind not in _MASKS:
            raise ValueError(f"unknown mask {kind!r}; known: {', '.join(sorted(_MASKS))}")
        known = _MASKS[kind].params
        values = dict(known)
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, val = item.partition("=")
            if not eq or key not in known:
                raise ValueError(f"bad mask parameter {item!r} for {kind}; known: {', '.join(known) or 'none'}")
            values[key] = int(val)
        return MaskSpec(kind, tuple(sorted(values.items())))

    def __str__(self) -> str:
        if not self.params:
            return self.kind
        return self.kind + ":" + ",".join(f"{k}={v}" for k, v in self.params)

    @property
    def args(self) -> dict[str, int]:
        return dict(self.params)

    @property
    def causal(self) -> bool:
        return _MASKS[self.kind].causal

    def mask_mod(self) -> MaskMod:
        return _MASKS[self.kind].factory(**self.args)

    def key_ranges(self, q_lo: int, q_hi: int, n_keys: int) -> list[tuple[int, int]]:
        """Key intervals that may be visible from queries at positions q_lo..q_hi (for block skipping)."""
        fn = _MASKS[self.kind].key_ranges
        if fn is None:
            return [(0, n_keys)]
        return [(max(0, lo), min(n_keys, hi)) for lo, hi in fn(q_lo, q_hi, n_keys, **self.args) if hi > lo]


def dense_mask(spec: str | MaskSpec, q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """The [q_len, kv_len] boolean mask with queries aligned to the end of the keys."""
    if isinstance(spec, str):
        spec = MaskSpec.parse(spec)
    q_idx = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    kv_idx = torch.arange(kv_len, device=device)[None, :]
    return spec.mask_mod()(q_idx, kv_idx).expand(q_len, kv_len)


def _full() -> MaskMod:
    return lambda q, kv: torch.ones_like(q >= kv)


def _causal() -> MaskMod:
    return lambda q, kv: kv <= q


def _sliding(window: int, sinks: int) -> MaskMod:
    """Each query sees the previous ``window`` keys (itself included) plus the first ``sinks`` keys."""

    def mod(q, kv):
        return (kv <= q) & ((q - kv < window) | (kv < sinks))

    return mod


register_mask(MaskKind("full", {}, _full, "every query sees every key (not causal)", causal=False))
def _sliding_ranges(q_lo, q_hi, n, window, sinks):
    local_lo = q_lo - window + 1
    if local_lo <= sinks:
        return [(0, q_hi + 1)]
    return [(0, sinks), (local_lo, q_hi + 1)]


register_mask(MaskKind("causal", {}, _causal, "every query sees itself and every earlier key",
                       key_ranges=lambda q_lo, q_hi, n: [(0, q_hi + 1)]))
register_mask(MaskKind("sliding", {"window": 4096, "sinks": 0}, _sliding,
                       "causal, the last `window` keys plus the first `sinks` (StreamingLLM)",
                       key_ranges=_sliding_ranges))
