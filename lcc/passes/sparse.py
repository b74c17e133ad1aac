"""``block-sparse``: each selected layer's causal mask becomes a sparse pattern's predicate.

The patterns are the mask kinds registered with ``sparse=True`` (:mod:`lcc.ops.masks`), so the
reference, the Triton kernel's block map and the cost all follow from the same predicate, and
this pass's parameters are those kinds' fields (one shared ``block``, ``window``, ...); prefill
and decode (one query at ``kv_len - 1`` against the cache) read the same mask spec.
"""

from __future__ import annotations

import dataclasses

from lcc.capture.program import Program
from lcc.errors import UsageError
from lcc.ops.masks import MaskSpec, mask_kinds, mask_pairs
from lcc.passes.base import MAX_TOKENS, Param, PassResult, register
from lcc.passes.rewrite_attention import rewrite_attention

_LAYERS = Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12")
# where this pass's default differs from the mask kind's (one value is shared by several patterns)
PASS_DEFAULTS = {"block": 64, "blocks": 8, "stride": 8, "c": 1}


class Patterns:
    """The registered sparse mask kinds, read when a pass string is checked (so later kinds count too)."""

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, kind in mask_kinds().items() if kind.sparse)

    def __contains__(self, name) -> bool:
        return name in self.names()

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return repr(self.names())


PATTERNS = Patterns()


def pattern_params() -> tuple[Param, ...]:
    """One parameter per field name of the sparse kinds, its doc prefixed with the patterns that take it."""
    users: dict[str, list[str]] = {}
    first: dict[str, Param] = {}
    for name in PATTERNS:
        for f in mask_kinds()[name].fields:
            users.setdefault(f.name, []).append(name)
            first.setdefault(f.name, f)
    return tuple(dataclasses.replace(f, default=PASS_DEFAULTS.get(n, f.default), doc=f"{', '.join(users[n])}: {f.doc}",
                                     high=MAX_TOKENS if f.type is int and f.high is None else f.high)
                 for n, f in first.items())


def pattern_mask(args: dict) -> MaskSpec:
    """The mask spec of ``args["pattern"]`` from the pass arguments that pattern takes."""
    kind = args["pattern"]
    # a kind registered after this pass was declared has no pass parameters of its own: its defaults apply
    names = [f.name for f in mask_kinds()[kind].fields if f.name in args]
    text = kind + (":" + ",".join(f"{n}={args[n]}" for n in names) if names else "")
    try:
        return MaskSpec.parse(text)
    except ValueError as e:
        raise UsageError(f"block-sparse: {e} (pattern {kind} takes {', '.join(names) or 'no parameters'})") from None


def _covers_causal(args: dict, length: int) -> bool:
    """Exact when the pattern keeps every causal pair at this length (patterns are causal subsets)."""
    return int(mask_pairs(pattern_mask(args), length, length)) == length * (length + 1) // 2


@register("block-sparse",
          params=(Param("pattern", str, "block-local", "sparse pattern", choices=PATTERNS), *pattern_params(),
                  _LAYERS),
          exact=False, exact_if=_covers_causal, slots=("attention",), before=("rerope", "leaky-rerope", "linear-attention"),
          composes=("flash", "attention-chunked", "sliding-window", "block-sparse", "rerope", "leaky-rerope"),
          shown=lambda a: {"pattern", "layers", *(f.name for f in mask_kinds()[a["pattern"]].fields)},
          doc=f"block-sparse attention ({', '.join(PATTERNS)}); exact when the pattern covers the causal mask")
def block_sparse(program: Program, layers: str = "all", **args) -> PassResult:
    """Rewrite causal (or earlier block-sparse) masks; layers that are already local keep their window."""
    spec = str(pattern_mask(args))

    def new_mask(old: str) -> str:
        kind = MaskSpec.parse(old).kind
        return spec if kind == "causal" or kind in PATTERNS else old

    return rewrite_attention(program, layers, mask=new_mask)
