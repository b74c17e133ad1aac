"""``lcc.rope`` as Relax ops (RoFormer eq. 34, rotate-half layout), in the reference's order.

angles = positions * inv_freq, emb = [angles, angles], cos/sin scaled by ``attention_scaling``;
the first R = 2 * len(inv_freq) channels become ``x * cos + rotate_half(x) * sin`` and the rest
pass through (partial rotary).  The length-dependent variants that ``lcc.ops.rope_scaling``
registers are Python rules with a branch on max(position) + 1 = l; here the branch is a
``where`` on l (so the same library serves every length):

- ``dynamic-ntk`` (emozilla 2023; YaRN §3.3): for l > L, inv_freq = 1 / b'^(2i/R) with
  b' = b * (s * l / L - (s - 1))^(R / (R - 2)), in fp32 as transformers computes it;
- ``longrope``: inv_freq holds [short ; long], the long half once l > L.

Any other variant runs as the reference.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from lcc.backends.tvm.nodes import dtype as dtype_of, relax_args, shape
from lcc.ops.rope import parse_variant

NATIVE_VARIANTS = ("dynamic-ntk", "longrope")


def rope_unsupported(args: dict) -> str | None:
    try:
        name = parse_variant(args["variant"])[0] if args["variant"] else ""
    except ValueError as e:
        return f"rope variant {args['variant']!r}: {e}"
    if name and name not in NATIVE_VARIANTS:
        return f"rope variant {args['variant']!r} has no Relax form"
    return None


def _f32(value: float):
    return relax.const(float(value), "float32")


def _variant_inv_freq(e, variant: str, inv_freq, positions):
    """The inverse frequencies the variant picks for these positions (fp32, [R/2])."""
    inv_freq = e(R.astype(inv_freq, "float32"))
    if not variant:
        return inv_freq
    name, p = parse_variant(variant)
    length = e(R.add(e(R.astype(e(R.max(positions)), "float32")), _f32(1.0)))  # l = max(position) + 1
    longer = e(R.greater(length, _f32(p["original"])))
    if name == "longrope":
        half = int(shape(inv_freq)[0]) // 2
        short = e(R.strided_slice(inv_freq, axes=[0], begin=[0], end=[half]))
        long = e(R.strided_slice(inv_freq, axes=[0], begin=[half], end=[2 * half]))
        return e(R.where(longer, long, short))
    dim, factor = int(p["dim"]), p["factor"]
    ratio = e(R.divide(e(R.multiply(_f32(factor), e(R.maximum(length, _f32(p["original"]))))),
                       _f32(p["original"])))
    base = e(R.multiply(_f32(p["base"]), e(R.power(e(R.subtract(ratio, _f32(factor - 1))), _f32(dim / (dim - 2))))))
    exponents = e(R.divide(e(R.astype(e(R.arange(0, dim, 2, "int64")), "float32")), _f32(dim)))
    scaled = e(R.divide(_f32(1.0), e(R.power(base, exponents))))
    return e(R.where(longer, scaled, inv_freq))


def convert_rope(node, importer) -> relax.Expr:
    """The Relax subgraph of one ``lcc.rope`` node."""
    a = relax_args(node, importer)
    e = importer.block_builder.emit
    x, positions = a["x"], a["positions"]
    inv_freq = _variant_inv_freq(e, a["variant"], a["inv_freq"], positions)
    dtype = dtype_of(x)
    D = int(shape(x)[3])
    half = int(shape(inv_freq)[0])
    r = 2 * half

    def channels(t, lo, hi):
        return e(R.strided_slice(t, axes=[3], begin=[lo], end=[hi]))

    def scaled(fn):  # [B,1,S,R], times attention_scaling, in x's dtype
        t = e(R.multiply(e(fn(emb)), _f32(a["attention_scaling"])))
        return e(R.expand_dims(e(R.astype(t, dtype)), 1))

    pos = e(R.expand_dims(e(R.astype(positions, "float32")), -1))
    freqs = e(R.multiply(pos, inv_freq))  # [B,S,R/2]
    emb = e(R.concat([freqs, freqs], axis=-1))
    cos, sin = scaled(R.cos), scaled(R.sin)
    x_rot = x if r == D else channels(x, 0, r)
    rotated = e(R.concat([e(R.negative(channels(x_rot, half, r))), channels(x_rot, 0, half)], axis=-1))
    out = e(R.add(e(R.multiply(x_rot, cos)), e(R.multiply(rotated, sin))))
    return out if r == D else e(R.concat([out, channels(x, r, D)], axis=-1))
