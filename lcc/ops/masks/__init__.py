"""Attention masks as predicates, FlexAttention-style: one file per mask family.

A mask is named by a spec string such as ``causal`` or ``sliding:window=4096,sinks=4``; its
meaning is one portable predicate over *absolute* (q_idx, kv_idx) positions, registered with
its parameters, key ranges and pair counts as one :class:`MaskKind` (:mod:`.kind`). The
reference, the kernels' block maps and predicates, the TVM lowering, the ``block-sparse`` pass
and the cost model all read that record. A new kind is one ``register_mask`` call (a new file
here, or anywhere: a test file registers a toy one). Families: ``full``, ``causal``,
``sliding`` and the block-sparse ``block-local``, ``strided``, ``fixed``, ``dilated``,
``global-local``.
"""

from lcc.ops.masks.kind import MaskKind, MaskMod, MaskSpec, causal_pairs, dense_mask, mask_kinds, register_mask
from lcc.ops.masks.pairs import mask_pairs
from lcc.ops.masks.block_map import block_map
from lcc.ops.masks import full, causal, sliding  # noqa: F401,E402  (registration order: kinds listed in this order)
from lcc.ops.masks import block_local, strided, fixed, dilated, global_local  # noqa: F401,E402

__all__ = ["MaskKind", "MaskMod", "MaskSpec", "block_map", "causal_pairs", "dense_mask", "mask_kinds", "mask_pairs",
           "register_mask"]
