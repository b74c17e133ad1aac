"""``block-local:block=B,blocks=N``: a query in block ``q//B`` sees blocks ``q//B - N + 1 .. q//B``.

BlockBERT (Qiu et al. 2020), made causal.
"""

import sympy

from lcc.ops.masks.kind import MaskKind, causal_pairs, register_mask
from lcc.spec import Field


def block_local_mod(q, kv, block, blocks):
    return (kv <= q) & (q // block - kv // block < blocks)


def block_local_rows(p, block, blocks):
    lo = ((p // block - blocks + 1) * block).clamp(min=0)
    return p - lo + 1


def block_local_pairs(Sq, Sk, block, blocks):
    per_row = (blocks - 1) * block + sympy.Rational(block + 1, 2)
    return sympy.Min(causal_pairs(Sq, Sk), Sq * per_row)


BLOCK_LOCAL = register_mask(MaskKind(
    "block-local", block_local_mod,
    (Field("block", int, 512, "positions per block", low=1),
     Field("blocks", int, 2, "blocks each query sees, its own included", low=1)),
    doc="causal; own block of `block` plus the previous `blocks`-1 (BlockBERT)",
    row_counts=block_local_rows, pairs=block_local_pairs, sparse=True))
