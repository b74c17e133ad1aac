"""ONNX lowering of ``lcc.rope``: opset-23 ``RotaryEmbedding`` with cos/sin computed from the positions.

cos and sin are ``cos(positions * inv_freq) * attention_scaling`` of shape [B, S, R/2], the
same fp32 arithmetic as :func:`lcc.ops.rope.rope_reference`; passed without ``position_ids``
(ONNX's 3-D cache form) so no position-indexed table of capacity rows is stored.  Partial
rotary is the op's ``rotary_embedding_dim``.  The length-dependent variants registered by
:mod:`lcc.ops.rope_scaling` (``dynamic-ntk``, ``longrope``) are computed in the graph from
max(positions) + 1 and chosen with ``Where`` (their torch form branches on the data, which
``torch.export`` cannot trace); other variants run as the op's reference decomposition.
"""

from __future__ import annotations

from lcc.ops.rope import parse_variant

VARIANTS = ("dynamic-ntk", "longrope")


def rope_unsupported(args: dict) -> str | None:
    try:
        name, _ = parse_variant(args.get("variant") or "")
    except ValueError as e:
        return f"rope variant {args.get('variant')!r}: {e}"
    if name and name not in VARIANTS:
        return f"rope variant {name!r} has no ONNX lowering"
    return None


def _seq_len(op, positions):
    """max(positions) + 1 as a 0-d int64."""
    return op.Add(op.ReduceMax(positions, keepdims=0), op.Constant(value_int=1))


def _dynamic_ntk(op, inv_freq, positions, base: float, factor: float, original: float, dim: float):
    """:func:`lcc.ops.rope_scaling.dynamic_ntk` above the trained length, ``inv_freq`` below (fp32, same order)."""
    dim = int(dim)
    seq = op.Cast(op.Max(_seq_len(op, positions), op.Constant(value_int=int(original))), to=1)
    grown = op.Sub(op.Div(op.Mul(seq, op.Constant(value_float=factor)), op.Constant(value_float=float(int(original)))),
                   op.Constant(value_float=factor - 1))
    new_base = op.Mul(op.Constant(value_float=base), op.Pow(grown, op.Constant(value_float=dim / (dim - 2))))
    exponents = op.Constant(value_floats=[float(i) / dim for i in range(0, dim, 2)])
    scaled = op.Div(op.Constant(value_float=1.0), op.Pow(new_base, exponents))
    longer = op.Greater(_seq_len(op, positions), op.Constant(value_int=int(original)))
    return op.Where(longer, scaled, inv_freq), dim // 2


def _longrope(op, inv_freq, positions, original: float):
    """``inv_freq`` = [short ; long]: the long half once max(position) + 1 exceeds the trained length."""
    half = inv_freq.shape[0] // 2
    short = op.Slice(inv_freq, op.Constant(value_ints=[0]), op.Constant(value_ints=[half]))
    long_ = op.Slice(inv_freq, op.Constant(value_ints=[half]), op.Constant(value_ints=[2 * half]))
    longer = op.Greater(_seq_len(op, positions), op.Constant(value_int=int(original)))
    return op.Where(longer, long_, short), half


def rope_onnx(x, positions, inv_freq, attention_scaling: float = 1.0, variant: str = ""):
    from onnxscript import opset23 as op

    name, params = parse_variant(variant or "")
    half = inv_freq.shape[0]
    if name == "dynamic-ntk":
        inv_freq, half = _dynamic_ntk(op, inv_freq, positions, **params)
    elif name == "longrope":
        inv_freq, half = _longrope(op, inv_freq, positions, **params)
    freqs = op.Mul(op.Unsqueeze(op.Cast(positions, to=1), op.Constant(value_ints=[-1])), inv_freq)  # [B,S,R/2]
    cos, sin = op.Cos(freqs), op.Sin(freqs)
    if attention_scaling != 1.0:
        scaling = op.Constant(value_float=float(attention_scaling))
        cos, sin = op.Mul(cos, scaling), op.Mul(sin, scaling)
    if x.dtype is not None and x.dtype.name != "FLOAT":
        cos, sin = op.CastLike(cos, x), op.CastLike(sin, x)
    rotary = 2 * half
    dim = 0 if rotary == x.shape[3] else rotary
    return op.RotaryEmbedding(x, cos, sin, rotary_embedding_dim=dim)
