"""Attention rewrites that change the mask or the algorithm of ``lcc.attention`` nodes."""

from __future__ import annotations

from lcc.capture.program import Program
from lcc.ops.masks import MaskSpec
from lcc.passes.base import MAX_TOKENS, Param, PassResult, register
from lcc.passes.rewrite_attention import rewrite_attention


# mask passes keep the algorithm and the algorithm passes keep the mask: they compose in the attention slot
# linear attention replaces whole layers: these may precede it (its layers drop them), never follow it
_ALGO = dict(slots=("attention",), composes=("flash", "attention-chunked", "sliding-window", "block-sparse"),
             before=("linear-attention",),
             plan_with=())


@register("flash", params=(Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12"),), exact=True, **_ALGO,
          doc="exact IO-aware attention: tiled online softmax, the L x L matrix never materialised")
def flash(program: Program, layers: str = "all") -> PassResult:
    return rewrite_attention(program, layers, algo=lambda _: "flash")


@register("attention-chunked",
          params=(Param("chunk", int, 1024, "query rows per chunk", low=1, high=MAX_TOKENS),
                  Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12")),
          exact=True, **_ALGO, plan=lambda target_len, trained_len: [f"chunk={c}" for c in (256, 1024, 4096) if c < target_len],
          doc="memory-efficient lazy softmax over query chunks in plain PyTorch (CPU fallback)")
def attention_chunked(program: Program, chunk: int = 1024, layers: str = "all") -> PassResult:
    return rewrite_attention(program, layers, algo=lambda _: f"chunked:chunk={chunk}")


def _sliding_exact(args: dict, length: int) -> bool:
    return args["window"] >= length


@register("sliding-window",
          params=(Param("window", int, 4096, "keys each query sees, itself included", low=1, high=MAX_TOKENS),
                  Param("sinks", int, 4, "first tokens every query also sees (StreamingLLM)", low=0, high=MAX_TOKENS),
                  Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12")),
          exact=False, exact_if=_sliding_exact, slots=("attention",), before=("rerope", "leaky-rerope", "linear-attention"),
          composes=("flash", "attention-chunked", "sliding-window", "block-sparse", "rerope", "leaky-rerope"),
          plan=lambda target_len, trained_len: ["window=4096,sinks=4"], plan_with=("flash", "attention-chunked:chunk=1024"),
          doc="sliding-window attention with attention sinks; exact when the window covers the length")
def sliding_window(program: Program, window: int = 4096, sinks: int = 4, layers: str = "all") -> PassResult:
    from lcc.errors import UsageError

    if window < 1 or sinks < 0:
        raise UsageError(f"sliding-window: need window >= 1 and sinks >= 0, got window={window}, sinks={sinks}")

    def new_mask(old: str) -> str:
        spec = MaskSpec.parse(old)
        if spec.kind == "sliding" and spec.args["window"] <= window:
            return old  # a pass never widens what a layer sees: its window is already narrower
        return f"sliding:window={window},sinks={sinks}"

    return rewrite_attention(program, layers, mask=new_mask)

