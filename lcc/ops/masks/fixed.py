"""``fixed:stride=L,c=C,block=b``: the query's own group of ``L`` (blocks) plus the last ``C`` of every
earlier group (Child et al. 2019, the "fixed" pattern)."""

import sympy

from lcc.ops.masks.kind import MaskKind, causal_pairs, register_mask
from lcc.spec import Field


def fixed_mod(q, kv, stride, c, block):
    group = stride * block
    return (kv <= q) & ((q // group == kv // group) | ((kv // block) % stride >= stride - c))


def fixed_rows(p, stride, c, block):
    groups = p // (stride * block)
    return p - groups * stride * block + 1 + groups * min(c, stride) * block


def fixed_pairs(Sq, Sk, stride, c, block):
    per_row = sympy.Rational(stride * block + 1, 2) + (Sk - Sq / 2) * min(c, stride) / stride
    return sympy.Min(causal_pairs(Sq, Sk), Sq * per_row)


FIXED = register_mask(MaskKind(
    "fixed", fixed_mod,
    (Field("stride", int, 128, "stride / group size, in blocks", low=1),
     Field("c", int, 8, "last blocks of every group all later queries see", low=0),
     Field("block", int, 1, "positions per block", low=1)),
    doc="causal; own group of `stride` plus last `c` of each earlier group",
    row_counts=fixed_rows, pairs=fixed_pairs, sparse=True))
