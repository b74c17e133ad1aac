"""``full``: every query sees every key (bidirectional attention; not causal)."""

from lcc.ops.masks.kind import MaskKind, register_mask


def full_mod(q, kv):
    return (q >= kv) | (q < kv)


FULL = register_mask(MaskKind("full", full_mod, doc="every query sees every key (not causal)", causal=False,
                              pairs=lambda Sq, Sk: Sq * Sk))
