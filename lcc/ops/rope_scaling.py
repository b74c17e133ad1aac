"""RoPE scaling methods: each maps the unscaled rotary basis to a new ``(inv_freq, attention_scaling)``.

Every method is a pure function ``fn(base, dim, factor, original, **params)`` of the
rotary base theta, the rotary dim R (the first R channels rotate; ``inv_freq`` has
R/2 entries theta_i = base^(-2i/R)), the scale factor s, the trained length L and the
method's own parameters.  Where transformers implements a method, the arithmetic follows
``transformers.modeling_rope_utils`` operation for operation, so ``inv_freq`` agrees bit
for bit.  Methods whose frequencies follow the current length (dynamic NTK, LongRoPE)
also register a ``lcc.rope`` variant (:data:`lcc.ops.rope.VARIANTS`); a RoPE-scaling
pass writes :meth:`RopeMethod.setting` (inv_freq, attention_scaling, variant) into each
``lcc.rope`` node.  :data:`METHODS` is the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lcc.ops.rope import VARIANTS
from lcc.spec import Field


def _exponents(dim: int, device=None) -> torch.Tensor:
    """2i/R for i < R/2, built as transformers builds them (int64 arange, cast to fp32, over R)."""
    return torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim


def default_inv_freq(base: float, dim: int, device=None) -> torch.Tensor:
    """RoFormer (Su et al. 2021) eq. 15: theta_i = base^(-2i/R)."""
    return 1.0 / (base ** _exponents(dim, device))


def linear(base, dim, factor, original=None):
    """Position Interpolation (Chen et al. 2023, §2.2: f'(x, m) = f(x, m L / L')): theta_i' = theta_i / s."""
    inv_freq = default_inv_freq(base, dim)
    inv_freq /= factor
    return inv_freq, 1.0


def ntk(base, dim, factor, original=None):
    """NTK-aware scaling (bloc97 2023; YaRN, Peng et al. 2023, §3.1): b' = b * s^(R/(R-2)).

    Changing the base leaves the fastest frequency unchanged and interpolates the slowest by s.
    """
    return default_inv_freq(base * factor ** (dim / (dim - 2)), dim), 1.0


def dynamic_ntk(base, dim, factor, original, seq_len=None):
    """Dynamic NTK (emozilla 2023; YaRN §3.3): the NTK base for the current length l.

    b' = b * (s * l / L - (s - 1))^(R/(R-2)) with l = max(seq_len, L), so lengths up to L
    keep the original basis.  ``seq_len`` may be a tensor (as transformers passes it from
    ``position_ids``, which makes the arithmetic fp32); None means L.  transformers' module
    keeps the largest length's basis while lengths stay above L (state across calls); the
    lcc variant is stateless, so the two agree for non-decreasing lengths (prefill, then
    decode) and whenever a length drops to L or below.
    """
    device = None
    if seq_len is None:
        seq_len = original
    elif isinstance(seq_len, torch.Tensor):
        device = seq_len.device
        seq_len = torch.maximum(seq_len, torch.tensor(original, dtype=seq_len.dtype, device=device))
    else:
        seq_len = max(seq_len, original)
    base = base * ((factor * seq_len / original) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** _exponents(dim, device)), 1.0


def yarn_attention_factor(factor, mscale=None, mscale_all_dim=None):
    """YaRN §3.4: sqrt(1/t) = 0.1 ln(s) + 1 (DeepSeek's mscale ratio when both mscales are given)."""

    def get(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if mscale and mscale_all_dim:
        return float(get(factor, mscale) / get(factor, mscale_all_dim))
    return get(factor)


def _yarn_ramp(beta_fast, beta_slow, dim, base, original, truncate):
    """1 - gamma per frequency index: 0 where a dimension turns more than beta_fast times over L, 1 below beta_slow.

    The dimension that turns n times over L is d(n) = R ln(L / (2 pi n)) / (2 ln b)
    (YaRN §3.2, r(d) = L / lambda_d solved for d); the ramp is linear between d(beta_fast) and d(beta_slow).
    """

    def dim_of(turns):
        return (dim * math.log(original / (turns * 2 * math.pi))) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a single-index ramp
    return torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)


def yarn(base, dim, factor, original, beta_fast=32.0, beta_slow=1.0, attention_factor=None, mscale=None,
         mscale_all_dim=None, truncate=True):
    """YaRN (Peng et al. 2023): NTK-by-parts (§3.2) plus attention temperature (§3.4).

    h(theta_d) = (1 - gamma_d) theta_d / s + gamma_d theta_d: dimensions that turn more than
    beta_fast times over L keep theta_d (extrapolate), fewer than beta_slow times are
    interpolated by s, linear in between; cos and sin are scaled by 0.1 ln(s) + 1.
    ``truncate`` rounds the ramp ends to whole dimensions (transformers' default).
    """
    if attention_factor is None:
        attention_factor = yarn_attention_factor(factor, mscale, mscale_all_dim)
    pos_freqs = base ** _exponents(dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    extrapolation = 1 - _yarn_ramp(beta_fast, beta_slow, dim, base, original, truncate)  # gamma_d
    inv_freq = inv_freq_interpolation * (1 - extrapolation) + inv_freq_extrapolation * extrapolation
    return inv_freq, attention_factor


def llama3(base, dim, factor, original, low_freq_factor=1.0, high_freq_factor=4.0):
    """Llama 3.1 scaling (Dubey et al. 2024, "The Llama 3 Herd of Models"; Meta's reference code).

    With wavelength lambda_i = 2 pi / theta_i: theta_i kept where lambda_i < L / high_freq_factor,
    theta_i / s where lambda_i > L / low_freq_factor, and between them
    (1 - g) theta_i / s + g theta_i with g = (L / lambda_i - low) / (high - low).
    """
    inv_freq = default_inv_freq(base, dim)
    low_wavelen, high_wavelen = original / low_freq_factor, original / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


def longrope_attention_factor(factor, original):
    """LongRoPE / Phi-3: sqrt(1 + ln(s) / ln(L)), 1 where s <= 1."""
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def longrope(base, dim, factor, original, short_factor=None, long_factor=None, attention_factor=None, seq_len=None):
    """LongRoPE (Ding et al. 2024, §2-3): theta_i' = theta_i / lambda_i, per-dimension searched factors.

    lambda = ``short_factor`` while the length is at most L, ``long_factor`` past it
    (``seq_len`` > L); cos and sin are scaled by sqrt(1 + ln(s) / ln(L)) at every length.
    """
    _check_factors(short_factor, long_factor, dim)
    if attention_factor is None:
        attention_factor = longrope_attention_factor(factor, original)
    ext = torch.tensor(long_factor if seq_len and seq_len > original else short_factor, dtype=torch.float32)
    return 1.0 / (ext * base ** _exponents(dim)), attention_factor


def _check_factors(short_factor, long_factor, dim):
    n = len(range(0, dim, 2))
    for name, f in (("short_factor", short_factor), ("long_factor", long_factor)):
        if f is None or len(f) != n:
            raise ValueError(f"longrope needs {name} with {n} entries (rotary dim {dim}), got {f!r}")


def power(base, dim, factor=1.0, original=None, k=0.5):
    """Giraffe power basis (Pal et al. 2023, §3 "Power Scaling"): theta_i' = theta_i (1 - 2i/R)^k.

    High frequencies (small i) barely move, low ones are stretched most, the fastest
    (i = 0) is unchanged.  ``factor`` is an optional linear pre-scale (the authors'
    ``ScaledLlamaRotaryEmbedding`` composes scale, then power); 1 gives the pure basis.
    """
    inv_freq = default_inv_freq(base, dim)
    if factor != 1.0:
        inv_freq = inv_freq / factor
    i = torch.arange(len(inv_freq), dtype=torch.float32)
    return inv_freq * (1.0 - i / len(inv_freq)) ** k, 1.0


def truncate(base, dim, factor=1.0, original=None, wavelength=0.0, zero_div=8.0, rho_div=16.0):
    """Giraffe truncated basis (Pal et al. 2023, §3 "Truncated Basis").

    theta_i' = theta_i if theta_i >= b;  rho if a <= theta_i < b;  0 if theta_i < a,
    with b = 2 pi / ``wavelength`` (default L: keep the frequencies that complete a turn
    within the trained context), a = b / ``zero_div`` and rho = b / ``rho_div``
    (8 and 16 in the authors' code).  ``factor`` is a linear pre-scale, as for :func:`power`.
    """
    inv_freq = default_inv_freq(base, dim)
    if factor != 1.0:
        inv_freq = inv_freq / factor
    b = 2 * math.pi / (wavelength or original)
    out = torch.where(inv_freq < b, torch.full_like(inv_freq, b / rho_div), inv_freq)
    return torch.where(inv_freq < b / zero_div, torch.zeros_like(inv_freq), out), 1.0


# ---- length-dependent rules, as lcc.rope variants ----------------------------------------------


def _dynamic_ntk_variant(inv_freq, positions, base, factor, original, dim):
    """transformers' ``dynamic_rope_update``: recompute once max(position) + 1 exceeds L."""
    if positions.numel() == 0:
        return inv_freq, 1.0
    seq_len = positions.max() + 1
    if not bool(seq_len > original):
        return inv_freq, 1.0
    new, _ = dynamic_ntk(base, int(dim), factor, int(original), seq_len=seq_len)
    return new, 1.0


def _longrope_variant(inv_freq, positions, original):
    """``inv_freq`` holds [short ; long]; the long half once max(position) + 1 exceeds L (as transformers)."""
    half = inv_freq.shape[0] // 2
    if positions.numel() and bool(positions.max() + 1 > original):
        return inv_freq[half:], 1.0
    return inv_freq[:half], 1.0


VARIANTS["dynamic-ntk"] = _dynamic_ntk_variant
VARIANTS["longrope"] = _longrope_variant


# ---- registry ----------------------------------------------------------------------------------

Param = Field  # a method's parameter: the one spec field type (lcc.spec)


@dataclass(frozen=True)
class RopeSetting:
    """What a RoPE-scaling pass writes into an ``lcc.rope`` node."""

    inv_freq: torch.Tensor
    attention_scaling: float
    variant: str = ""


@dataclass(frozen=True)
class RopeMethod:
    """One scaling method: its pure function, typed parameters, and transformers' name for it."""

    name: str
    fn: Callable[..., tuple[torch.Tensor, float]]
    params: tuple[Param, ...]
    doc: str
    transformers_rope_type: str | None
    setting_fn: Callable[..., RopeSetting] | None = None  # length-dependent methods

    def resolve(self, params: dict) -> dict:
        """Defaults filled in, types checked; unknown names are an error."""
        known = {p.name: p for p in self.params}
        unknown = set(params) - set(known)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}; known: {sorted(known)}")
        out = {}
        for p in self.params:
            v = params.get(p.name, p.default)
            out[p.name] = v if v is None or p.type is tuple else p.type(v)
        return out

    def compute(self, base: float, dim: int, factor: float, original: int, **params):
        """(inv_freq [R/2] fp32, attention_scaling) at lengths up to L."""
        return self.fn(base, dim, factor, original, **self.resolve(params))

    def setting(self, base: float, dim: int, factor: float, original: int, **params) -> RopeSetting:
        if self.setting_fn is not None:
            return self.setting_fn(base, dim, factor, original, **self.resolve(params))
        inv_freq, scaling = self.compute(base, dim, factor, original, **params)
        return RopeSetting(inv_freq, float(scaling))


def _dynamic_setting(base, dim, factor, original):
    inv_freq, scaling = dynamic_ntk(base, dim, factor, original)
    return RopeSetting(inv_freq, scaling, f"dynamic-ntk:base={base!r},factor={factor!r},original={original},dim={dim}")


def _longrope_setting(base, dim, factor, original, **params):
    short, scaling = longrope(base, dim, factor, original, **params)
    long, _ = longrope(base, dim, factor, original, **params, seq_len=original + 1)
    return RopeSetting(torch.cat([short, long]), float(scaling), f"longrope:original={original}")


_YARN = (Param("beta_fast", float, 32.0, "ramp end: dimensions turning more often over L keep theta"),
         Param("beta_slow", float, 1.0, "ramp start: dimensions turning less often are interpolated"),
         Param("attention_factor", float, None, "cos/sin scale; None: 0.1 ln(s) + 1"),
         Param("mscale", float, None, "DeepSeek mscale numerator"),
         Param("mscale_all_dim", float, None, "DeepSeek mscale denominator"),
         Param("truncate", bool, True, "round the ramp ends to whole dimensions"))

METHODS: dict[str, RopeMethod] = {m.name: m for m in (
    RopeMethod("linear", linear, (), linear.__doc__, "linear"),
    RopeMethod("ntk", ntk, (), ntk.__doc__, None),
    RopeMethod("dynamic-ntk", dynamic_ntk, (), dynamic_ntk.__doc__, "dynamic", _dynamic_setting),
    RopeMethod("yarn", yarn, _YARN, yarn.__doc__, "yarn"),
    RopeMethod("llama3", llama3, (Param("low_freq_factor", float, 1.0), Param("high_freq_factor", float, 4.0)),
               llama3.__doc__, "llama3"),
    RopeMethod("longrope", longrope, (Param("short_factor", tuple, None, "per-dimension factors, length <= L"),
                                      Param("long_factor", tuple, None, "per-dimension factors, length > L"),
                                      Param("attention_factor", float, None, "None: sqrt(1 + ln s / ln L)")),
               longrope.__doc__, "longrope", _longrope_setting),
    RopeMethod("power", power, (Param("k", float, 0.5, "exponent of (1 - 2i/R)"),), power.__doc__, None),
    RopeMethod("truncate", truncate, (Param("wavelength", float, 0.0, "b = 2 pi / wavelength; 0: L"),
                                      Param("zero_div", float, 8.0, "a = b / zero_div"),
                                      Param("rho_div", float, 16.0, "rho = b / rho_div")),
               truncate.__doc__, None),
)}


def from_rope_parameters(rope_parameters: dict, max_position_embeddings: int) -> tuple[str, float, int, dict]:
    """A transformers ``rope_parameters`` dict as (method, factor, L, params), reading it as transformers does."""
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    by_hf = {m.transformers_rope_type: m for m in METHODS.values() if m.transformers_rope_type}
    if rope_type not in by_hf:
        raise ValueError(f"no lcc RoPE method for transformers rope_type {rope_type!r}")
    method = by_hf[rope_type]
    original = rope_parameters.get("original_max_position_embeddings") or max_position_embeddings
    if rope_type == "dynamic":
        original = max_position_embeddings  # transformers' dynamic NTK measures lengths against this
    factor = rope_parameters.get("factor") or max_position_embeddings / original
    names = {p.name for p in method.params}
    params = {k: v for k, v in rope_parameters.items() if k in names and v is not None}
    if rope_type == "yarn":  # transformers treats a falsy beta as unset
        params = {k: v for k, v in params.items() if not (k.startswith("beta_") and not v)}
    return method.name, float(factor), int(original), params


__all__ = ["METHODS", "RopeMethod", "RopeSetting", "Param", "default_inv_freq", "from_rope_parameters",
           "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope", "power", "truncate"]
