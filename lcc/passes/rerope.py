"""Passes onto ``lcc.rerope_attention``, attention with remapped relative positions (:mod:`lcc.ops.remap`).

``rerope`` and ``leaky-rerope`` (Su 2023): relative positions past a window are clamped or
slowed.  ``self-extend`` (Jin et al. 2024): past a neighbour window W, grouped positions
i // G and j // G shifted to meet the window's edge.  ``dca`` (An et al. 2024): Dual Chunk
Attention's intra-, successive- and inter-chunk positions.

Per layer, the two ``lcc.rope`` nodes and the ``lcc.attention`` node become one
``lcc.rerope_attention`` node that takes the un-rotated q and k; the KV cache then
holds un-rotated keys, since a key's rotation depends on the query it meets.

Parameters past the trained length T are fixed from the papers, never tuned on measurements:
Self-Extend's reach is (T - W) G + W, so by default W = T / 4 and G the smallest power of two
whose reach covers the target length (the program's capacity); DCA's chunk size and local
window are the reference code's ``replace_with_chunkllama`` defaults, 3 T / 4 and T / 16
(HKUNLP/ChunkLlama, ``chunkllama_attn_replace.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lcc.capture.program import Program
from lcc.errors import UsageError
from lcc.passes.base import MAX_TOKENS, Param, PassResult, register
from lcc.passes.graph import ATTENTION, ROPE, get_arg, layer_of, lcc_nodes, refuse_softcap

RERoPE = torch.ops.lcc.rerope_attention.default


def _rewrite(program: Program, window: int, leaky_factor: float, kind: str = "rerope", group: int = 1,
             chunk_size: int = 0) -> PassResult:
    graphs = program.copy_graphs()
    for name, gm in graphs.items():
        ropes: dict[int, list] = {}
        for node in lcc_nodes(gm, ROPE):
            ropes.setdefault(layer_of(node), []).append(node)
        for attn in lcc_nodes(gm, ATTENTION):
            refuse_softcap("leaky-rerope" if kind == "rerope" and leaky_factor else kind, attn)
            layer = layer_of(attn)
            q_rope = get_arg(attn, "q")
            pair = ropes.get(layer, [])
            if q_rope not in pair or len(pair) != 2 or get_arg(q_rope, "variant"):
                raise UsageError(f"{kind}: layer {layer} of {name} is not plain rope + attention "
                                 f"(apply {kind} before other rope or attention-changing passes)")
            k_rope = pair[1] if pair[0] is q_rope else pair[0]
            k_rope.replace_all_uses_with(get_arg(k_rope, "x"))  # the cache keeps un-rotated keys
            args = dict(q=get_arg(q_rope, "x"), k=get_arg(attn, "k"), v=get_arg(attn, "v"),
                        positions=get_arg(q_rope, "positions"), inv_freq=get_arg(q_rope, "inv_freq"),
                        attention_scaling=get_arg(q_rope, "attention_scaling"), kv_len=get_arg(attn, "kv_len"),
                        scale=get_arg(attn, "scale"), window=int(window), leaky_factor=float(leaky_factor),
                        mask=get_arg(attn, "mask"))
            if kind != "rerope":
                args.update(algo="auto", kind=kind, group=int(group), chunk_size=int(chunk_size))
            with gm.graph.inserting_after(attn):
                new = gm.graph.call_function(RERoPE, tuple(args.values()))
            new.meta.update({k: v for k, v in attn.meta.items() if k != "val"})
            new.meta["lcc_layer"] = layer
            attn.replace_all_uses_with(new)
            gm.graph.erase_node(attn)
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return PassResult(program.with_entries(graphs), True)


def _exact_if(args: dict, length: int) -> bool:
    return args["window"] >= length


_WINDOW = Param("window", int, 512, "relative positions below this stay exact RoPE", low=1, high=MAX_TOKENS)
# the fused op replaces rope + attention: a mask set before it is kept, an algo or a later rope change is not
_COMPOSE = dict(slots=("positions", "attention"), composes=("sliding-window", "block-sparse"), plan_with=())


def _plan_window(target_len: int, trained_len: int) -> list[str]:
    """Past the trained length: window = trained / 4 (docs/rope.md's 2048 for an 8k model); none within it."""
    return [f"window={trained_len // 4}"] if target_len > trained_len else []


@register("rerope", params=(_WINDOW,), exact=False, exact_if=_exact_if, plan=_plan_window, **_COMPOSE,
          doc="ReRoPE: relative positions past the window clamp to it (fused kernel on GPU)")
def rerope(program: Program, window: int = 512) -> PassResult:
    return _rewrite(program, window, 0.0)


@register("leaky-rerope", params=(_WINDOW, Param("factor", float, 16.0, "k: positions past the window advance 1/k",
                                                  low=1.0, high=1e6)),
          exact=False, exact_if=_exact_if, plan=_plan_window, **_COMPOSE,
          doc="Leaky ReRoPE: relative positions past the window grow with slope 1/k")
def leaky_rerope(program: Program, window: int = 512, factor: float = 16.0) -> PassResult:
    return _rewrite(program, window, 1.0 / factor)


@dataclass(frozen=True)
class _IntOrAuto(Param):
    """A bounded integer, or ``auto`` (the default): the paper's value relative to the trained length."""

    def parse(self, what: str, text: str):
        if text.strip().lower() == "auto":
            return "auto"
        return Param(self.name, int, int(self.low), self.doc, low=self.low, high=self.high).parse(what, text)


def self_extend_defaults(trained_len: int, target_len: int, window: int | None = None) -> tuple[int, int]:
    """(group, window) from the paper's reach (T - W) G + W: W = T / 4 unless given, G the smallest power of two
    whose reach covers ``target_len`` (1 within the trained length)."""
    window = window or trained_len // 4
    group = 1
    while (trained_len - window) * group + window < target_len:
        group *= 2
    return group, window


def dca_defaults(trained_len: int) -> tuple[int, int]:
    """(chunk, local): ChunkLlama's ``replace_with_chunkllama``, chunk_size = 3 T / 4 and local_window = T / 16."""
    return trained_len * 3 // 4, trained_len // 16


def _given(args: dict) -> set:
    """Only the parameters given a number (``auto`` is the default), so the stage name parses back."""
    return {k for k, v in args.items() if v != "auto"}


def _self_extend_exact(args: dict, length: int, trained_len: int | None = None) -> bool:
    """Exact when no relative position reaches past the window (W >= length) or nothing is grouped (G = 1);
    ``auto`` values resolve as the pass does for a program of this length when the trained length is known."""
    group, window = args["group"], args["window"]
    if trained_len is not None:
        auto_group, window = self_extend_defaults(trained_len, length, None if window == "auto" else window)
        group = auto_group if group == "auto" else group
    return group == 1 or (window != "auto" and window >= length)


def _plan_self_extend(target_len: int, trained_len: int) -> list[str]:
    """Past the trained length: W = T / 4 and the smallest power-of-two G whose reach covers the target."""
    if target_len <= trained_len:
        return []
    group, window = self_extend_defaults(trained_len, target_len)
    return [f"group={group},window={window}"]


@register("self-extend", params=(
        _IntOrAuto("group", str, "auto", "G >= 1: positions past the window are grouped by G (auto: the smallest "
                   "power of two whose reach (T - W) G + W covers the program's length)", low=1, high=MAX_TOKENS),
        _IntOrAuto("window", str, "auto", "W: relative positions below W stay exact RoPE; 0 < W < trained length T "
                   "(auto: T / 4)", low=1, high=MAX_TOKENS)),
        exact=False, exact_if=_self_extend_exact, shown=_given, plan=_plan_self_extend,
        slots=("positions", "attention"),
        plan_with=(), doc="Self-Extend (Jin et al. 2024): grouped positions past a neighbour window, no tuning")
def self_extend(program: Program, group="auto", window="auto") -> PassResult:
    trained = program.spec.trained_len
    if window != "auto" and window >= trained:
        raise UsageError(f"self-extend: window={window} must be below the trained length {trained} "
                         f"(e.g. window={trained // 4})")
    auto_group, window = self_extend_defaults(trained, program.cache.capacity, None if window == "auto" else window)
    return _rewrite(program, window, 0.0, "self-extend", auto_group if group == "auto" else group)


def _dca_exact(args: dict, length: int, trained_len: int | None = None) -> bool:
    """Exact when one chunk (chunk - local positions) holds the whole length; ``auto`` values resolve to
    ChunkLlama's defaults when the trained length is known."""
    chunk, local = args["chunk"], args["local"]
    if trained_len is not None:
        default_chunk, default_local = dca_defaults(trained_len)
        chunk = default_chunk if chunk == "auto" else chunk
        local = default_local if local == "auto" else local
    return "auto" not in (chunk, local) and chunk - local >= length


def _plan_dca(target_len: int, trained_len: int) -> list[str]:
    """Past the trained length: ChunkLlama's chunk size 3 T / 4 and local window T / 16."""
    if target_len <= trained_len:
        return []
    chunk, local = dca_defaults(trained_len)
    return [f"chunk={chunk},local={local}"]


@register("dca", params=(
        _IntOrAuto("chunk", str, "auto", "chunk size s, 2 <= s < trained length T (auto: 3 T / 4, ChunkLlama's); "
                   "chunks hold s - local positions", low=2, high=MAX_TOKENS),
        _IntOrAuto("local", str, "auto", "local window w, 0 <= w < s (auto: T / 16, ChunkLlama's)", low=0,
                   high=MAX_TOKENS)),
        exact=False, exact_if=_dca_exact, shown=_given, plan=_plan_dca, slots=("positions", "attention"),
        plan_with=(), doc="Dual Chunk Attention (An et al. 2024, ChunkLlama): intra-, successive- and inter-chunk "
                          "positions, no tuning")
def dca(program: Program, chunk="auto", local="auto") -> PassResult:
    trained = program.spec.trained_len
    default_chunk, default_local = dca_defaults(trained)
    chunk = default_chunk if chunk == "auto" else chunk
    local = default_local if local == "auto" else local
    if chunk >= trained:
        raise UsageError(f"dca: chunk={chunk} must be below the trained length {trained} (e.g. chunk={default_chunk})")
    if local >= chunk:
        raise UsageError(f"dca: local={local} must be below the chunk size {chunk} (e.g. local={chunk // 12})")
    return _rewrite(program, local, 0.0, "dca", 1, chunk)
