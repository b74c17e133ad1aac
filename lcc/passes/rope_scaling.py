"""``rope-scaling``: extend a model's context by rescaling its rotary frequencies.

Each method (``lcc.ops.rope_scaling.METHODS``) maps the model's rotary basis to new
inverse frequencies and an attention scaling; length-dependent methods (dynamic
NTK, LongRoPE) also set a variant that ``lcc.rope`` evaluates from the positions.
The pass writes that setting into every ``lcc.rope`` node.
"""

from __future__ import annotations

from lcc.capture.program import Program
from lcc.errors import UsageError
from lcc.ops.rope_scaling import METHODS
from lcc.passes.base import Param, PassResult, register
from lcc.passes.rope_graph import rewrite_rope

_PARAMS = (
    Param("method", str, "yarn", "linear, ntk, dynamic-ntk, yarn, llama3, longrope, power, truncate",
          choices=tuple(METHODS)),
    Param("factor", float, 4.0, "scale factor s: target length / trained length"),
    Param("original", int, 0, "trained length L (0: the model's own)"),
    Param("beta_fast", float, 32.0, "yarn"),
    Param("beta_slow", float, 1.0, "yarn"),
    Param("attention_factor", float, 0.0, "yarn, longrope: cos/sin scale (0: the method's default)"),
    Param("low_freq_factor", float, 1.0, "llama3"),
    Param("high_freq_factor", float, 4.0, "llama3"),
    Param("short_factor", str, "", "longrope: per-dimension factors for lengths <= L, '|'-separated"),
    Param("long_factor", str, "", "longrope: per-dimension factors for lengths > L, '|'-separated"),
    Param("k", float, 0.5, "power: exponent"),
    Param("wavelength", float, 0.0, "truncate: b = 2 pi / wavelength (0: L)"),
)


def _method_params(method, given: dict) -> dict:
    names = {p.name for p in method.params}
    out = {}
    for key, value in given.items():
        if key not in names:
            continue
        if key == "attention_factor" and not value:
            continue
        if key in ("short_factor", "long_factor"):
            if not value:
                continue
            try:
                value = tuple(float(x) for x in value.split("|"))
            except ValueError:
                raise UsageError(f"rope-scaling: {key}={value!r} must be '|'-separated numbers")
        out[key] = value
    return out


def _shown(args: dict) -> set:
    """The method's own parameters (and ``original`` when set): ``rope-scaling:method=linear,factor=4``."""
    m = METHODS.get(args.get("method"))
    own = {p.name for p in m.params} if m is not None else {p.name for p in _PARAMS}
    return {"method", "factor"} | {n for n in own if n in args} | ({"original"} if args.get("original") else set())


@register("rope-scaling", params=_PARAMS, exact=False, shown=_shown,
          doc="RoPE scaling (PI, NTK, dynamic NTK, YaRN, Llama 3, LongRoPE, Giraffe power / truncate)")
def rope_scaling(program: Program, method: str = "yarn", factor: float = 4.0, original: int = 0,
                 **params) -> PassResult:
    if factor <= 0:
        raise UsageError(f"rope-scaling: factor must be positive, got {factor}")
    spec = program.spec
    if spec.rotary.scaling:
        raise UsageError(f"{spec.model_id} already uses RoPE scaling {spec.rotary.scaling}: "
                         "rope-scaling applies to models with plain RoPE")
    m = METHODS[method]
    try:
        setting = m.setting(spec.rotary.theta, spec.rotary.rotary_dim, factor, original or spec.trained_len,
                            **_method_params(m, params))
    except (ValueError, TypeError) as e:
        raise UsageError(f"rope-scaling:method={method}: {e}")
    return rewrite_rope(program, setting.inv_freq, setting.attention_scaling, setting.variant)
