"""The mask-kind record and its registry, and ``MaskSpec``: a parsed ``kind:key=value,...`` string.

A mask kind is one :class:`MaskKind`: a *portable* predicate ``mod(q, kv, *args)`` over absolute
positions (queries aligned to the end of the valid keys), written with operators only
(``& | < <= == // %``) so the same function runs on torch tensors (the reference, block maps),
on Relax expressions (TVM) and, jitted, inside Triton kernels; its parameters as
:class:`lcc.spec.Field` records with bounds; key ranges for block skipping; pair counts for the
cost model. Every consumer derives what it needs from the record; :func:`register_mask` is the
one place a kind is added. Model: attention-gym ``attn_gym/masks/``, one file per family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import sympy
import torch

from lcc.spec import Field, SpecError, format_spec, parse

MaskMod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskKind:
    """One family of masks: its portable predicate, parameters and everything derived from them."""

    name: str
    mod: Callable[..., Any]  # portable predicate mod(q, kv, *kernel_args) -> bool tensor
    fields: tuple[Field, ...] = ()
    doc: str = ""
    causal: bool = True  # never keeps a key after the query
    # params -> the predicate's integer arguments (default: the fields' values in order)
    kernel_args: Callable[..., tuple[int, ...]] | None = None
    check: Callable[..., str | None] | None = None  # (**params) -> why they are invalid together, or None
    # key_ranges(q_lo, q_hi, n_keys, **params) -> [(lo, hi), ...]: half-open key intervals that hold every
    # key any query in [q_lo, q_hi] may see (a superset is fine; the predicate still decides). None: all keys.
    key_ranges: Callable[..., list[tuple[int, int]]] | None = None
    # row_counts(p, **params): exact keys kept by queries at absolute positions p (int64 tensor), vectorised
    row_counts: Callable[..., torch.Tensor] | None = None
    # pairs(Sq, Sk, **params): kept (query, key) pairs as sympy (an estimate where row_counts is exact)
    pairs: Callable[..., sympy.Expr] | None = None
    portable: bool = True  # False: the predicate calls torch functions, so only the reference runs it
    sparse: bool = False  # offered as a pattern of the block-sparse pass


_MASKS: dict[str, MaskKind] = {}


def register_mask(kind: MaskKind) -> MaskKind:
    """Add (or replace) a mask kind; every backend, the pass and the cost model see it from then on."""
    _MASKS[kind.name] = kind
    return kind


def mask_kinds() -> dict[str, MaskKind]:
    return dict(_MASKS)


def causal_pairs(Sq, Sk):
    """Pairs a causal mask keeps with Sq queries aligned to the end of Sk keys."""
    return Sq * Sk - Sq * (Sq - 1) / 2


@dataclass(frozen=True)
class MaskSpec:
    """A parsed mask spec: kind plus integer parameters (defaults filled in, sorted by name)."""

    kind: str
    params: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def parse(text: str) -> "MaskSpec":
        """``kind:key=value,...`` through :func:`lcc.spec.parse`; a bad string is a one-line SpecError."""
        kinds = {name: k.fields for name, k in _MASKS.items()}
        name, args = parse(text, kinds, "mask")
        reason = _MASKS[name].check(**args) if _MASKS[name].check else None
        if reason:
            raise SpecError(f"mask {name}: {reason}")
        return MaskSpec(name, tuple(sorted(args.items())))

    def __str__(self) -> str:
        return format_spec(self.kind, dict(self.params))

    @property
    def record(self) -> MaskKind:
        return _MASKS[self.kind]

    @property
    def args(self) -> dict[str, int]:
        return dict(self.params)

    @property
    def causal(self) -> bool:
        return self.record.causal

    @property
    def kernel_args(self) -> tuple[int, ...]:
        """The integer arguments of the portable predicate after (q, kv)."""
        kind = self.record
        if kind.kernel_args is not None:
            return tuple(int(a) for a in kind.kernel_args(**self.args))
        return tuple(int(self.args[f.name]) for f in kind.fields)

    def mask_mod(self) -> MaskMod:
        mod, args = self.record.mod, self.kernel_args
        return lambda q, kv: mod(q, kv, *args)

    def key_ranges(self, q_lo: int, q_hi: int, n_keys: int) -> list[tuple[int, int]]:
        """Key intervals that may be visible from queries at positions q_lo..q_hi (for block skipping)."""
        fn = self.record.key_ranges
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
