"""Attention rewrites that change the mask or the algorithm of ``lcc.attention`` nodes."""

from __future__ import annotations

from lcc.capture.program import Program
from lcc.ops.masks import MaskSpec
from lcc.passes.base import Param, PassResult, register
from lcc.passes.graph import ATTENTION, get_arg, layer_of, lcc_nodes, parse_layers, set_args


def _rewrite_attention(program: Program, layers: str, **changes_fn) -> PassResult:
    graphs = program.copy_graphs()
    chosen = parse_layers(layers, program.spec.layers)
    changed = False
    for gm in graphs.values():
        for node in lcc_nodes(gm, ATTENTION):
            if layer_of(node) not in chosen:
                continue
            updates = {k: f(get_arg(node, k)) for k, f in changes_fn.items()}
            if any(get_arg(node, k) != v for k, v in updates.items()):
                set_args(node, **updates)
                changed = True
        gm.recompile()
    return PassResult(program.with_entries(graphs), changed)


@register("flash", params=(Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12"),), exact=True,
          doc="exact IO-aware attention: tiled online softmax, the L x L matrix never materialised")
def flash(program: Program, layers: str = "all") -> PassResult:
    return _rewrite_attention(program, layers, algo=lambda _: "flash")


@register("attention-chunked",
          params=(Param("chunk", int, 1024, "query rows per chunk"),
                  Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12")),
          exact=True, doc="memory-efficient lazy softmax over query chunks in plain PyTorch (CPU fallback)")
def attention_chunked(program: Program, chunk: int = 1024, layers: str = "all") -> PassResult:
    return _rewrite_attention(program, layers, algo=lambda _: f"chunked:chunk={chunk}")


def _sliding_exact(args: dict, length: int) -> bool:
    return args["window"] >= length


@register("sliding-window",
          params=(Param("window", int, 4096, "keys each query sees, itself included"),
                  Param("sinks", int, 4, "first tokens every query also sees (StreamingLLM)"),
                  Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12")),
          exact=False, exact_if=_sliding_exact,
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

    return _rewrite_attention(program, layers, mask=new_mask)


from lcc.passes import linear_attention, sparse  # noqa: F401,E402  (register block-sparse, linear-attention)
