"""``rope-scaling``: extend a model's context by rescaling its rotary frequencies.

Each method (``lcc.ops.rope_scaling.METHODS``) maps the model's rotary basis to new
inverse frequencies and an attention scaling; length-dependent methods (dynamic
NTK, LongRoPE) also set a variant that ``lcc.rope`` evaluates from the positions.
The pass writes that setting into the ``lcc.rope`` nodes of the layers it scales: every layer, or,
where the model keeps RoPE per layer kind (Gemma 3: local layers with their own base), the
full-attention (global) layers only, whose positions reach past the trained length; a local layer
sees at most its window.  On a model that already ships scaling on those layers, linear composes
with linear (the factors multiply); anything else is refused in one line.
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


def scaled_layers(spec) -> list[int]:
    """The layers rope-scaling rewrites: the full-attention ones where RoPE is kept per layer kind, else all."""
    if spec.rotary_layers:
        full = [i for i, kind in enumerate(spec.attention) if kind == "full"]
        if full:
            return full
    return list(range(spec.layers))


def _existing_scaling(spec) -> dict:
    """The scaling the scaled layers ship with (``{}``: plain RoPE); they share one, or the pass refuses."""
    found = {repr(spec.rotary_of(i).scaling): spec.rotary_of(i).scaling for i in scaled_layers(spec)}
    if len(found) > 1:
        raise UsageError(f"{spec.model_id}: its layers ship different RoPE scalings ({', '.join(found)}): "
                         "rope-scaling applies to layers that share one")
    return next(iter(found.values()), {})


def _composes(program: Program, method: str | None = None) -> str | None:
    """Why rope-scaling cannot apply on top of the model's own scaling (None: plain RoPE, or linear on linear)."""
    scaling = _existing_scaling(program.spec)
    if not scaling or (scaling.get("rope_type") == "linear" and method in (None, "linear")):
        return None
    return (f"{program.spec.model_id} already uses RoPE scaling {scaling}: rope-scaling composes only "
            "method=linear on a linear-scaled model (the factors multiply); others need plain RoPE")


def _requires(program: Program) -> str | None:
    """The pass list's precondition: a model whose own scaling no method composes with is refused (a linear-scaled
    one passes: the pass itself refuses a method other than linear on it)."""
    return _composes(program, "linear")


PLANNED_METHODS = ("linear", "ntk", "dynamic-ntk", "yarn")


def _plan(target_len: int, trained_len: int) -> list[str]:
    """Past the trained length: each training-free method with factor s = target / trained (none within it)."""
    if target_len <= trained_len:
        return []
    return [f"method={m},factor={target_len / trained_len:g}" for m in PLANNED_METHODS]


@register("rope-scaling", params=_PARAMS, exact=False, shown=_shown, requires=_requires, plan=_plan,
          slots=("positions",), composes=("rerope", "leaky-rerope", "kv-sink-cache"), before=("rerope", "leaky-rerope"),
          doc="RoPE scaling (PI, NTK, dynamic NTK, YaRN, Llama 3, LongRoPE, Giraffe power / truncate)")
def rope_scaling(program: Program, method: str = "yarn", factor: float = 4.0, original: int = 0,
                 **params) -> PassResult:
    spec = program.spec
    reason = _composes(program, method)
    if reason:
        raise UsageError(reason)
    layers = scaled_layers(spec)
    rotary = spec.rotary_of(layers[0])
    if rotary.scaling:  # linear on linear: one linear scaling by the product of the factors
        factor = float(rotary.scaling.get("factor", 1.0)) * factor
    m = METHODS[method]
    try:
        setting = m.setting(rotary.theta, rotary.rotary_dim, factor, original or spec.trained_len,
                            **_method_params(m, params))
    except (ValueError, TypeError) as e:
        raise UsageError(f"rope-scaling:method={method}: {e}")
    return rewrite_rope(program, setting.inv_freq, setting.attention_scaling, setting.variant,
                        None if len(layers) == spec.layers else set(layers))
