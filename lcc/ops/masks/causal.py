"""``causal``: each query sees itself and every earlier key (decoder self-attention)."""

from lcc.ops.masks.kind import MaskKind, causal_pairs, register_mask


def causal_mod(q, kv):
    return kv <= q


CAUSAL = register_mask(MaskKind("causal", causal_mod, doc="every query sees itself and every earlier key",
                                key_ranges=lambda q_lo, q_hi, n: [(0, q_hi + 1)], pairs=causal_pairs))
