"""``dilated:segment=w,rate=r,levels=n,growth=g``: LongNet's dilated attention (Ding et al. 2023).

Level ``i`` splits positions into segments of ``w*g^i`` and keeps every ``r*g^i``-th position of
each; a pair is kept if some level keeps both (the union of levels), made causal.
"""

import sympy
import torch

from lcc.ops.masks.kind import MaskKind, causal_pairs, register_mask
from lcc.spec import Field


def dilated_mod(q, kv, segment, rate, levels, growth):
    allowed = (q < 0) & (kv < 0)
    w = segment
    r = rate
    for _ in range(levels):
        allowed = allowed | ((q // w == kv // w) & ((q % w) % r == 0) & ((kv % w) % r == 0))
        w = w * growth
        r = r * growth
    return allowed & (kv <= q)


def dilated_rows(p, segment, rate, levels, growth):
    # levels nest (segments and rates divide the next ones), so the union splits into bands:
    # keys in [start_i, start_{i-1}) are reachable from level i on, and kept iff j % r_i == 0.
    total, end, active = torch.zeros_like(p), p.clone(), torch.ones_like(p, dtype=torch.bool)
    w, r = segment, rate
    for _ in range(levels):
        active = active & (p % r == 0)
        start = (p // w) * w
        band = (end // r - (start - 1) // r).clamp(min=0)
        total += torch.where(active & (end >= start), band, 0)
        end = torch.minimum(end, start - 1)
        w, r = w * growth, r * growth
    return total


def dilated_pairs(Sq, Sk, segment, rate, levels, growth):
    # level i adds the band of its segment outside level i-1's, every r_i-th key, for 1/r_i of the rows
    w = [segment * growth**i for i in range(levels)]
    r = [rate * growth**i for i in range(levels)]
    per_row = sympy.Rational(1, 2 * r[0]) + sum(sympy.Rational(w[i] - (w[i - 1] if i else 0), 2 * r[i] ** 2)
                                                for i in range(levels))
    return sympy.Min(causal_pairs(Sq, Sk), Sq * per_row)


def dilated_check(segment, rate, levels, growth):
    return "segment must be a multiple of rate" if segment % rate else None


DILATED = register_mask(MaskKind(
    "dilated", dilated_mod,
    (Field("segment", int, 2048, "segment length of level 0", low=1),
     Field("rate", int, 1, "dilation rate of level 0", low=1),
     Field("levels", int, 2, "levels, segment and rate grow by `growth` each", low=1),
     Field("growth", int, 2, "growth of segment and rate per level", low=1)),
    doc="causal; union of LongNet levels, segment*growth^i with dilation rate*growth^i",
    check=dilated_check, row_counts=dilated_rows, pairs=dilated_pairs, sparse=True))
