"""``lcc.rope``: rotary position embedding (Su et al. 2021, RoFormer eq. 34), rotate-half layout.

x [B, H, S, D] is rotated on its first R = 2 * len(inv_freq) channels (partial
rotary leaves the rest untouched) by angles positions[b, s] * inv_freq; cos and sin
are multiplied by ``attention_scaling`` (YaRN / LongRoPE's temperature; 1 otherwise).
Scaling methods change ``inv_freq`` and ``attention_scaling``; ``variant`` names a
length-dependent rule (e.g. dynamic NTK) that the RoPE passes register.
"""

from __future__ import annotations

import functools

import inspect
from typing import Callable

import torch

from lcc.ops import registry
from lcc.spec import Field
from lcc.spec import parse as parse_spec
from lcc.spec import split as split_spec

# variant name -> fn(inv_freq, positions, **params) -> (inv_freq, attention_scaling multiplier)
VARIANTS: dict[str, Callable] = {}


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _variant_fields(fn: Callable) -> tuple[Field, ...]:
    """A variant's keyword parameters (after ``inv_freq, positions``) as float fields."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    return tuple(Field(p.name, float, p.default if p.default is not p.empty else 0.0) for p in params
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def parse_variant(variant: str) -> tuple[str, dict[str, float]]:
    """``name:key=value,...`` -> (name, {key: float}) for the keys given; ``""`` -> ("", {}); bad: a SpecError."""
    name, items = _parse_variant(variant)
    return name, dict(items)


@functools.lru_cache(maxsize=256)
def _parse_variant(variant: str) -> tuple[str, tuple]:
    """Memoised: a decode step calls each layer's two rope nodes with the same variant string (60 parses a
    step on smollm2 took a third of the step's rope time)."""
    if not variant:
        return "", ()
    name, args = parse_spec(variant, {n: _variant_fields(fn) for n, fn in VARIANTS.items()}, "rope variant")
    given = {key for key, _ in split_spec(variant)[1]}
    return name, tuple((k, v) for k, v in args.items() if k in given)


def _variant_inv_freq(inv_freq, positions, variant):
    if not variant:
        return inv_freq, 1.0
    name, params = parse_variant(variant)
    return VARIANTS[name](inv_freq, positions, **params)


def cos_sin(positions, inv_freq, attention_scaling, variant, dtype):
    """cos and sin [B, 1, S, R] of the angles positions * inv_freq (the variant's), scaled, in ``dtype``."""
    inv_freq, extra = _variant_inv_freq(inv_freq, positions, variant)
    freqs = positions[..., None].float() * inv_freq.to(device=positions.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * (attention_scaling * extra)).to(dtype).unsqueeze(1)
    sin = (emb.sin() * (attention_scaling * extra)).to(dtype).unsqueeze(1)
    return cos, sin


class _LastCosSin:
    """The cos / sin of the last call, reused while the next call's inputs are equal (compared by value).

    Every layer's two rope nodes of one forward rotate by the same positions and frequencies: transformers
    computes cos / sin once per forward and hands them to every layer, while a program of ``lcc.rope`` ops
    recomputes them 2 x layers times (on smollm2's decode step 60 times, a dozen ATen calls each: about an
    eighth of a step at 512 positions).  A graph rewrite could hoist them, at the price of a second op in every
    backend's lowering; this memo keeps the op whole.  Inputs are compared by value (``torch.equal`` of the
    positions and frequencies: two calls, against the dozen it saves), never by identity, so a positions
    tensor reused in place cannot be answered with stale angles.
    """

    def __init__(self):
        self.key = None
        self.value = None

    def __call__(self, positions, inv_freq, attention_scaling, variant, dtype):
        key = self.key
        if (key is not None and key[2:] == (attention_scaling, variant, dtype, positions.device)
                and key[0].shape == positions.shape and key[1].shape == inv_freq.shape
                and key[1].device == inv_freq.device and torch.equal(key[0], positions)
                and torch.equal(key[1], inv_freq)):
            return self.value
        self.value = cos_sin(positions, inv_freq, attention_scaling, variant, dtype)
        self.key = (positions.clone(), inv_freq.clone(), attention_scaling, variant, dtype, positions.device)
        return self.value


_last_cos_sin = _LastCosSin()


def rope_reference(x, positions, inv_freq, attention_scaling=1.0, variant=""):
    """Same arithmetic, in the same order, as transformers' rotary embedding + apply_rotary_pos_emb."""
    positions = positions.to(x.device)
    if type(positions) is torch.Tensor and type(inv_freq) is torch.Tensor and not torch.compiler.is_compiling():
        cos, sin = _last_cos_sin(positions, inv_freq, attention_scaling, variant, x.dtype)
    else:  # traced (export, a backend's decomposition): no value comparisons in the graph
        cos, sin = cos_sin(positions, inv_freq, attention_scaling, variant, x.dtype)
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return (x * cos) + (rotate_half(x) * sin)
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat([(x_rot * cos) + (rotate_half(x_rot) * sin), x_pass], dim=-1)


@torch.library.custom_op("lcc::rope", mutates_args=())
def rope(
    x: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float = 1.0,
    variant: str = "",
) -> torch.Tensor:
    return rope_reference(x, positions, inv_freq, attention_scaling, variant)


@rope.register_fake
def _(x, positions, inv_freq, attention_scaling=1.0, variant=""):
    return torch.empty_like(x)


def rope_cost(B, H, S, D, R, itemsize: int = 4):
    """FLOPs (cos/sin plus 3 per rotated channel) and bytes (x read and written)."""
    flops = B * S * R + 3 * B * H * S * R
    moved = 2 * itemsize * B * H * S * D
    return flops, moved, 0


registry.declare(registry.OpDef(
    name="rope",
    op=torch.ops.lcc.rope.default,
    reference=rope_reference,
    cost=rope_cost,
    doc="rotary embedding, rotate-half layout, partial rotary, attention scaling",
))
