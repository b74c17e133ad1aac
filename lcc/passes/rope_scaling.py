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
from lcc.passes.base import MAX_TOKENS, Param, PassResult, register
from lcc.passes.rope_graph import rewrite_rope

_PARAMS = (
    Param("method", str, "yarn", "linear, ntk, dynamic-ntk, yarn, llama3, longrope, power, truncate",
          choices=tuple(METHODS)),
    Param("factor", float, 4.0, "scale factor s: target length / trained length", low=1e-3, high=1e6),
    Param("original", int, 0, "trained length L (0: the model's own)", low=0, high=MAX_TOKENS),
    Param("beta_fast", float, 32.0, "yarn", low=0.0, high=1e6),
    Param("beta_slow", float, 1.0, "yarn", low=0.0, high=1e6),
    Param("attention_factor", float, 0.0, "yarn, longrope: cos/sin scale (0: the method's default)",
          low=0.0, high=1e3),
    Param("low_freq_factor", float, 1.0, "llama3", low=1e-3, high=1e6),
    Param("high_freq_factor", float, 4.0, "llama3", low=1e-3, high=1e6),
    Param("short_factor", str, "", "longrope: per-dimension factors for lengths <= L, '|'-separated"),
    Param("long_factor", str, "", "longrope: per-dimension factors for lengths > L, '|'-separated"),
    Param("k", float, 0.5, "power: exponent", low=0.0, high=100.0),
    Param("wavelength", float, 0.0, "truncate: b = 2 pi / wavelength (0: L)", low=0.0, high=1e12),
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


def _plain_rope(program: Program) -> str | None:
    scaling = program.spec.rotary.scaling
    if scaling:
        return f"{program.spec.model_id} already uses RoPE scaling {scaling}: rope-scaling applies to models with plain RoPE"
    return None


PLANNED_METHODS = ("linear", "ntk", "dynamic-ntk", "yarn")


def _plan(target_len: int, trained_len: int) -> list[str]:
    """Past the trained length: each training-free method with factor s = target / trained (none within it)."""
    if target_len <= trained_len:
        return []
    return [f"method={m},factor={target_len / trained_len:g}" for m in PLANNED_METHODS]


@register("rope-scaling", params=_PARAMS, exact=False, shown=_shown, requires=_plain_rope, plan=_plan,
          slots=("positions",), composes=("rerope", "leaky-rerope", "kv-sink-cache"), before=("rerope", "leaky-rerope"),
          doc="RoPE scaling (PI, NTK, dynamic NTK, YaRN, Llama 3, LongRoPE, Giraffe power / truncate)")
def rope_scaling(program: Program, method: str = "yarn", factor: float = 4.0, original: int = 0,
                 **params) -> PassResult:
    spec = program.spec
    reason = _plain_rope(program)
    if reason:
        raise UsageError(reason)
    m = METHODS[method]
    try:
        setting = m.setting(spec.rotary.theta, spec.rotary.rotary_dim, factor, original or spec.trained_len,
                            **_method_params(m, params))
    except (ValueError, TypeError) as e:
        raise UsageError(f"rope-scaling:method={method}: {e}")
    return rewrite_rope(program, setting.inv_freq, setting.attention_scaling, setting.variant)
