"""``sliding:window=W,sinks=S``: the last ``W`` keys (itself included) plus the first ``S``.

Sliding-window attention (Longformer's local band, Mistral) with StreamingLLM's attention
sinks (Xiao et al. 2023): the first tokens stay visible to every query.
"""

import sympy

from lcc.ops.masks.kind import MaskKind, causal_pairs, register_mask
from lcc.spec import Field


def sliding_mod(q, kv, window, sinks):
    return (kv <= q) & ((q - kv < window) | (kv < sinks))


def sliding_ranges(q_lo, q_hi, n, window, sinks):
    local_lo = q_lo - window + 1
    if local_lo <= sinks:
        return [(0, q_hi + 1)]
    return [(0, sinks), (local_lo, q_hi + 1)]


def sliding_pairs(Sq, Sk, window, sinks):
    """At most ``window`` local keys plus ``sinks`` per query; never more than causal."""
    return sympy.Min(causal_pairs(Sq, Sk), Sq * (window + sinks))


SLIDING = register_mask(MaskKind(
    "sliding", sliding_mod,
    (Field("window", int, 4096, "keys each query sees, itself included", low=1),
     Field("sinks", int, 0, "first keys every query also sees", low=0)),
    doc="causal, the last `window` keys plus the first `sinks` (StreamingLLM)",
    key_ranges=sliding_ranges, pairs=sliding_pairs))
