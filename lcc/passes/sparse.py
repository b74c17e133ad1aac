"""``block-sparse``: each selected layer's causal mask becomes a sparse pattern's predicate.

The pattern is one :mod:`lcc.ops.sparse_masks` mask kind, so the reference, the Triton
kernel's block map and the cost all follow from the same predicate; prefill and decode
(one query at ``kv_len - 1`` against the cache) read the same mask spec.
"""

from __future__ import annotations

from lcc.capture.program import Program
from lcc.errors import UsageError
from lcc.ops.masks import MaskSpec, mask_kinds
from lcc.ops.sparse_masks import mask_pairs
from lcc.passes.attention import _rewrite_attention
from lcc.passes.base import Param, PassResult, register

PATTERNS = ("block-local", "strided", "fixed", "dilated", "global-local")
_LAYERS = Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12")


def pattern_mask(args: dict) -> MaskSpec:
    """The mask spec of ``args["pattern"]`` from the pass arguments that pattern takes."""
    kind = args["pattern"]
    names = mask_kinds()[kind].params
    text = kind + ":" + ",".join(f"{n}={args[n]}" for n in names)
    try:
        spec = MaskSpec.parse(text)
        spec.mask_mod()  # checks the parameters
    except ValueError as e:
        raise UsageError(f"block-sparse: {e} (pattern {kind} takes {', '.join(names)})") from None
    return spec


def _covers_causal(args: dict, length: int) -> bool:
    """Exact when the pattern keeps every causal pair at this length (patterns are causal subsets)."""
    return int(mask_pairs(pattern_mask(args), length, length)) == length * (length + 1) // 2


@register("block-sparse",
          params=(Param("pattern", str, "block-local", "sparse pattern", choices=PATTERNS),
                  Param("block", int, 64, "block-local, strided, fixed: positions per block"),
                  Param("blocks", int, 8, "block-local: blocks each query sees, its own included"),
                  Param("stride", int, 8, "strided, fixed: stride / group size, in blocks"),
                  Param("c", int, 1, "fixed: last blocks of every group all later queries see"),
                  Param("segment", int, 2048, "dilated: segment length of level 0"),
                  Param("rate", int, 1, "dilated: dilation rate of level 0"),
                  Param("levels", int, 2, "dilated: levels, segment and rate grow by `growth` each"),
                  Param("growth", int, 2, "dilated: growth of segment and rate per level"),
                  Param("globals", int, 4, "global-local: first tokens that see and are seen by all"),
                  Param("window", int, 4096, "global-local: local window, itself included"),
                  Param("every", int, 0, "global-local: every `every`-th token is global too (0: none)"),
                  _LAYERS),
          exact=False, exact_if=_covers_causal,
          shown=lambda a: {"pattern", "layers", *mask_kinds()[a["pattern"]].params},
          doc="block-sparse attention (block-local, strided, fixed, dilated, global-local); "
              "exact when the pattern covers the causal mask")
def block_sparse(program: Program, layers: str = "all", **args) -> PassResult:
    """Rewrite causal (or earlier block-sparse) masks; layers that are already local keep their window."""
    spec = str(pattern_mask(args))

    def new_mask(old: str) -> str:
        return spec if MaskSpec.parse(old).kind in ("causal",) + PATTERNS else old

    return _rewrite_attention(program, layers, mask=new_mask)
