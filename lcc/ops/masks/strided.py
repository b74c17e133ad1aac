"""``strided:stride=L,block=b``: the last ``L`` positions plus every ``L``-th one before.

Sparse Transformer (Child et al. 2019, Sec. 4.2), both heads' sets merged; with ``block=b > 1``
the rule applies to blocks of ``b`` positions, as in their block-sparse kernels.
"""

from lcc.ops.masks.kind import MaskKind, causal_pairs, register_mask
from lcc.spec import Field

import sympy


def strided_mod(q, kv, stride, block):
    return (kv <= q) & ((q // block - kv // block < stride) | ((q // block - kv // block) % stride == 0))


def strided_rows(p, stride, block):
    qb = p // block
    return p - (qb - stride + 1).clamp(min=0) * block + 1 + (qb // stride) * block


def strided_pairs(Sq, Sk, stride, block):
    per_row = stride * block + (Sk - Sq / 2) / stride  # mean key position Sk - Sq/2
    return sympy.Min(causal_pairs(Sq, Sk), Sq * per_row)


STRIDED = register_mask(MaskKind(
    "strided", strided_mod,
    (Field("stride", int, 128, "stride / group size, in blocks", low=1),
     Field("block", int, 1, "positions per block", low=1)),
    doc="causal; last `stride` plus every `stride`-th (Sparse Transformer)",
    row_counts=strided_rows, pairs=strided_pairs, sparse=True))
