"""KV-cache layout rewrites: a quantized cache (KIVI / fp8) and a StreamingLLM sink + ring cache.

Both replace each entry's cache placeholders, cache writes and outputs, and the attention
that reads the cache, then give the program a new ``CacheLayout`` listing its tensors.

- ``kv-quant`` (KIVI, Liu et al. 2024): the cache is stored as ``lcc.ops.kv_cache`` parts;
  writes become ``lcc.kv_quant_write`` and decode attention ``lcc.attention_kvq``, which reads
  the codes directly.  ``prefill`` keeps full-precision attention over the prompt (as KIVI does)
  and writes the quantized cache; the evaluation entries ``prefill_full``/``prefill_logits`` use
  ``lcc.attention_kvq_sim``, so their logits at every position are those token-by-token
  decoding through the quantized cache would give (what ``lcc diff`` and perplexity measure).
- ``kv-sink-cache`` (StreamingLLM, Xiao et al. 2024, sec. 3.2): ``sinks`` first tokens plus a
  ring of the last ``window``; keys are cached *before* RoPE and rotated after the cache read
  by their position inside the cache (sinks 0..S-1, then the window in order), the query by
  min(position, S+W-1), so decode runs to any length in constant memory with bounded
  positions.  A prompt of at most S+W tokens is prefilled exactly; a longer one is prefilled
  with the ``sliding:window=W,sinks=S`` mask over its own positions (sink keys are then seen
  at their text distance, not their cache distance) and leaves the same cache.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from lcc.capture.program import CacheLayout, Program, RingCache
from lcc.errors import UsageError
from lcc.ops.kv_cache import KVQuantFormat
from lcc.ops.masks import MaskSpec
from lcc.passes.base import MAX_TOKENS, Param, PassResult, register
from lcc.passes.graph import ATTENTION, ROPE, get_arg, layer_of, lcc_nodes, refuse_softcap, set_args

aten = torch.ops.aten
KV_WRITE = torch.ops.lcc.kv_quant_write.default
ATTENTION_KVQ = torch.ops.lcc.attention_kvq.default
ATTENTION_KVQ_SIM = torch.ops.lcc.attention_kvq_sim.default
_WRITES = (aten.index_copy.default, aten.slice_scatter.default)
_CASTS = (aten.to.dtype, aten._to_copy.default, aten.alias.default)
_ASSERT = aten._assert_tensor_metadata.default


# --- finding the cache in an entry graph ------------------------------------------------------------------------


@dataclass
class CacheSite:
    """One layer's cache in one entry: the K/V placeholders, their writes, the attention reading them."""

    layer: int
    k_in: torch.fx.Node
    v_in: torch.fx.Node
    k_write: torch.fx.Node
    v_write: torch.fx.Node
    attention: torch.fx.Node

    @staticmethod
    def new_value(write: torch.fx.Node) -> torch.fx.Node:
        """The tokens a write stores: index_copy(cache, dim, index, src) / slice_scatter(cache, src, ...)."""
        return write.args[3] if write.target == aten.index_copy.default else write.args[1]


def _write_of(placeholder: torch.fx.Node) -> torch.fx.Node:
    writes = [u for u in placeholder.users if u.op == "call_function" and u.target in _WRITES]
    if len(writes) != 1:
        raise UsageError(f"cache input {placeholder.name} is not written once by index_copy/slice_scatter: "
                         f"the program's cache was already rewritten")
    return writes[0]


def cache_sites(gm: torch.fx.GraphModule, layers: int) -> list[CacheSite]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    cache = placeholders[-2 * layers:]
    attention = {layer_of(n): n for n in lcc_nodes(gm, ATTENTION)}
    return [CacheSite(i, cache[2 * i], cache[2 * i + 1], _write_of(cache[2 * i]), _write_of(cache[2 * i + 1]),
                      attention[i]) for i in range(layers)]


def position_input(gm: torch.fx.GraphModule) -> torch.fx.Node | None:
    """The decode entry's ``position`` placeholder (None in prefill entries)."""
    return next((n for n in gm.graph.nodes if n.op == "placeholder" and n.target == "position"), None)


def through_casts(node: torch.fx.Node) -> torch.fx.Node:
    while node.op == "call_function" and node.target in _CASTS:
        node = node.args[0]
    return node


def splice(graph: torch.fx.Graph, fn: Callable, args: list[torch.fx.Node], examples: list) -> tuple:
    """Trace ``fn`` to ATen with ``make_fx`` and copy its nodes into ``graph`` at the insertion point."""
    traced = make_fx(fn)(*examples)
    env = dict(zip([n for n in traced.graph.nodes if n.op == "placeholder"], args))
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            return tuple(pytree.tree_map(lambda a: env[a] if isinstance(a, torch.fx.Node) else a, node.args[0]))
        if node.op == "get_attr":
            raise RuntimeError("spliced functions must not create constants")
        env[node] = graph.node_copy(node, lambda a: env[a])
    raise RuntimeError("traced function has no output")


# --- replacing the cache inputs and outputs ------------------------------------------------------------------------


def _prune(graph: torch.fx.Graph) -> None:
    """Dead-code elimination that also drops nodes whose only users are metadata asserts."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes)):
            if node.op != "call_function" or node.target is _ASSERT or not node.users:
                continue
            if all(u.op == "call_function" and u.target is _ASSERT for u in node.users):
                for u in list(node.users):
                    graph.erase_node(u)
                changed = True
        graph.eliminate_dead_code()


def _erase_downstream(graph: torch.fx.Graph, roots: list[torch.fx.Node]) -> None:
    """Erase ``roots`` and every node that depends on them (all must be dead after the rewrite)."""
    doomed, order = set(roots), []
    for node in graph.nodes:
        if node in doomed or any(a in doomed for a in node.all_input_nodes):
            doomed.add(node)
            order.append(node)
    for node in reversed(order):
        if node.op == "output" or any(u not in doomed for u in node.users):
            raise RuntimeError(f"{node.name} still feeds the program after the cache rewrite")
        graph.erase_node(node)


def replace_cache_io(gm: torch.fx.GraphModule, layers: int, names: list[str],
                     rewrite: Callable[[CacheSite, list[torch.fx.Node]], list[torch.fx.Node]]) -> None:
    """New cache placeholders ``names`` (split evenly over layers); ``rewrite(site, inputs) -> outputs``.

    The entry keeps its calling convention (flat positional inputs, a flat output tuple ending
    in the cache); its pytree specs and codegen are rebuilt for the new number of tensors.
    """
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        graph.erase_node(node)  # export's input-shape guards describe the old cache
    sites = cache_sites(gm, layers)
    per = len(names) // layers
    with graph.inserting_before(sites[0].k_in):
        new_inputs = [graph.placeholder(name) for name in names]
    outputs = []
    for site in sites:
        outputs += rewrite(site, new_inputs[site.layer * per:(site.layer + 1) * per])
    out = next(n for n in graph.nodes if n.op == "output")
    results = list(out.args[0])
    out.args = (tuple(results[:len(results) - 2 * layers]) + tuple(outputs),)
    _erase_downstream(graph, [n for s in sites for n in (s.k_in, s.v_in)])
    _prune(graph)
    set_signature(gm)


def set_signature(gm: torch.fx.GraphModule) -> None:
    graph = gm.graph
    names = [n.target for n in graph.nodes if n.op == "placeholder"]
    n_out = len(next(n for n in graph.nodes if n.op == "output").args[0])
    in_spec = pytree.tree_structure((tuple(range(len(names))), {}))
    out_spec = pytree.tree_structure(tuple(range(n_out)))
    codegen = graph._codegen
    if isinstance(codegen, torch.fx.graph._PyTreeCodeGen):
        graph._codegen = torch.fx.graph._PyTreeCodeGen(torch.fx.graph._PyTreeInfo(names, in_spec, out_spec))
    gm._in_spec, gm._out_spec = in_spec, out_spec
    gm.recompile()


def plain_cache(program: Program) -> str | None:
    """The precondition of both layout passes: the program's cache is still plain K/V."""
    if not program.cache.plain:
        return (f"the program's cache is already {program.cache.kind!r}; apply one KV-cache layout pass only")
    return None


def _check_plain(program: Program, name: str) -> None:
    reason = plain_cache(program)
    if reason:
        raise UsageError(f"{name}: {reason}")


# --- kv-quant ------------------------------------------------------------------------------------------------------


def quantized_layout(cache: CacheLayout, fmt: KVQuantFormat) -> CacheLayout:
    specs = []
    for i in range(cache.layers):
        for kv in ("k", "v"):
            specs += [(f"{kv}_{part}_{i}", shape, dtype) for part, shape, dtype in
                      fmt.part_specs(kv, cache.batch, cache.kv_heads, cache.capacity, cache.head_dim)]
    return replace(cache, quant=fmt, tensors=tuple(specs))


def _quant_rewrite(gm: torch.fx.GraphModule, entry: str, fmt: KVQuantFormat, per_part: int):
    graph = gm.graph
    position = position_input(gm)
    spec = str(fmt)

    def rewrite(site: CacheSite, inputs: list[torch.fx.Node]) -> list[torch.fx.Node]:
        outs = []
        for which, write, parts in (("k", site.k_write, inputs[:per_part]), ("v", site.v_write, inputs[per_part:])):
            with graph.inserting_before(write.next):
                new = graph.call_function(KV_WRITE, (parts, CacheSite.new_value(write), position, spec, which))
                outs.append([graph.call_function(operator.getitem, (new, j)) for j in range(per_part)])
        attn = site.attention
        refuse_softcap("kv-quant", attn)
        q, k, v, kv_len, scale, mask = (get_arg(attn, a) for a in ("q", "k", "v", "kv_len", "scale", "mask"))
        if position is not None:  # decode: attention reads the quantized cache
            with graph.inserting_before(attn):
                new_attn = graph.call_function(ATTENTION_KVQ, (q, outs[0], outs[1], kv_len, scale, mask, spec, "auto"))
        elif entry != "prefill":  # evaluation entries: logits as decoding would produce them
            with graph.inserting_before(attn):
                new_attn = graph.call_function(ATTENTION_KVQ_SIM, (q, k, v, scale, mask, spec))
        else:
            return outs[0] + outs[1]
        new_attn.meta.update({k_: v_ for k_, v_ in attn.meta.items() if k_ != "val"})
        attn.replace_all_uses_with(new_attn)
        graph.erase_node(attn)
        return outs[0] + outs[1]

    return rewrite


@register("kv-quant",
          params=(Param("bits", int, 4, "bits per element of the integer formats", choices=(2, 4, 8)),
                  Param("group", int, 32, "elements per scale: tokens per key channel, channels per value token "
                                               "(at most the head dim)", low=1, high=1 << 16),
                  Param("keys", str, "channel", "key statistics per channel (KIVI) or per token",
                        choices=("channel", "token")),
                  Param("residual", int, 128, "most recent tokens kept in fp16", low=0, high=MAX_TOKENS),
                  Param("format", str, "int", "int (asymmetric, packed) or fp8 (e4m3)", choices=("int", "fp8"))),
          exact=False, requires=plain_cache, slots=("cache", "attention"),
          composes=("flash", "attention-chunked", "sliding-window"),
          doc="quantized KV cache (KIVI int8/4/2, fp8 e4m3); attention reads it without dequantizing "
                           "the whole cache")
def kv_quant(program: Program, bits: int = 4, group: int = 32, keys: str = "channel", residual: int = 128,
             format: str = "int") -> PassResult:
    _check_plain(program, "kv-quant")
    try:
        group = min(group, program.cache.head_dim)  # a value group spans at most one head
        fmt = KVQuantFormat(format, 8 if format == "fp8" else bits, group, keys, residual)
        fmt.check_head_dim(program.cache.head_dim)
    except ValueError as e:
        raise UsageError(f"kv-quant: {e}")
    layout = quantized_layout(program.cache, fmt)
    names = [name for name, _, _ in layout.tensors]
    per_part = len(names) // (2 * program.cache.layers)
    graphs = program.copy_graphs()
    for entry, gm in graphs.items():
        replace_cache_io(gm, program.cache.layers, names, _quant_rewrite(gm, entry, fmt, per_part))
    return PassResult(program.with_entries(graphs, cache=layout), True)


# --- kv-sink-cache -------------------------------------------------------------------------------------------------


def ring_slot(position, sinks: int, window: int):
    """The slot token ``position`` is written to: itself for a sink, else sinks + (position - sinks) % window."""
    return torch.where(position < sinks, position, sinks + (position - sinks) % window)


def slot_tokens(n, sinks: int, window: int):
    """For each slot of the cache after ``n`` tokens: the token it holds (meaningful where slot < n)."""
    s = torch.arange(sinks + window)
    r = s - sinks
    t_window = sinks + r + window * torch.div(n - 1 - sinks - r, window, rounding_mode="floor")
    return torch.where(s < sinks, s, t_window)


def cache_positions(n, sinks: int, window: int):
    """RoPE positions by place in the cache (StreamingLLM): per slot, and the query's, after ``n`` tokens."""
    shift = (n - sinks - window).clamp(min=0)  # tokens evicted so far
    s = torch.arange(sinks + window)
    return torch.where(s < sinks, s, (slot_tokens(n, sinks, window) - shift).clamp(min=0)), n - 1 - shift


def _decode_indices(sinks: int, window: int, batch: int):
    size = sinks + window

    def fn(position):
        n = position + 1
        slot_pos, q_pos = cache_positions(n, sinks, window)
        return (ring_slot(position, sinks, window).reshape(1), slot_pos.reshape(1, size).expand(batch, size),
                q_pos.reshape(1, 1).expand(batch, 1), n.clamp(max=size))

    return fn


def _prefill_gather(sinks: int, window: int):
    def fn(n):
        t = slot_tokens(n, sinks, window)
        return torch.minimum(t.clamp(min=0), n - 1), (torch.arange(sinks + window) < n).reshape(1, 1, sinks + window, 1)

    return fn


def _rope_of(node: torch.fx.Node, what: str) -> torch.fx.Node:
    rope = through_casts(node)
    if not (rope.op == "call_function" and rope.target == ROPE):
        raise UsageError(f"kv-sink-cache: the {what} of layer attention is not a lcc.rope output; StreamingLLM "
                         f"positions need a rotary model")
    return rope


def _meta_dtype(node: torch.fx.Node):
    val = node.meta.get("val")
    return getattr(val, "dtype", None)


def _sink_rewrite(gm: torch.fx.GraphModule, sinks: int, window: int, batch: int, dtype: torch.dtype):
    graph = gm.graph
    position = position_input(gm)
    shared = {}
    mask = f"sliding:window={window},sinks={sinks}"

    def indices():
        """Slot and position tensors, computed once per entry right after the inputs."""
        if not shared:
            first = next(n for n in graph.nodes if n.op not in ("placeholder", "get_attr"))
            with graph.inserting_before(first):
                if position is not None:
                    shared["idx"] = splice(graph, _decode_indices(sinks, window, batch), [position],
                                           [torch.tensor(5)])
                else:
                    ids = next(n for n in graph.nodes if n.op == "placeholder")
                    size = graph.call_function(aten.sym_size.int, (ids, 1))
                    n = graph.call_function(aten.scalar_tensor.default, (size,), {"dtype": torch.int64})
                    shared["idx"] = splice(graph, _prefill_gather(sinks, window), [n], [torch.tensor(5)])
        return shared["idx"]

    def write(cache_in, src, idx):
        if position is not None:
            slot = idx[0]
            return graph.call_function(aten.index_copy.default, (cache_in, 2, slot, src))
        tokens, valid = idx
        gathered = graph.call_function(aten.index_select.default, (src, 2, tokens))
        return graph.call_function(aten.where.self, (valid, gathered, cache_in))

    def rewrite(site: CacheSite, inputs: list[torch.fx.Node]) -> list[torch.fx.Node]:
        k_rope = _rope_of(CacheSite.new_value(site.k_write), "cached key")
        attn = site.attention
        kind = MaskSpec.parse(get_arg(attn, "mask")).kind
        if kind not in ("causal", "full") and get_arg(attn, "mask") != mask:
            raise UsageError(f"kv-sink-cache: layer {site.layer} attends with {get_arg(attn, 'mask')!r}; "
                             f"the sink cache replaces full causal attention only")
        idx = indices()
        with graph.inserting_before(attn):
            k_src = graph.call_function(aten.to.dtype, (k_rope.args[0], dtype))
            k_out = write(inputs[0], k_src, idx)
            v_out = write(inputs[1], CacheSite.new_value(site.v_write), idx)
            if position is None:  # prefill: fresh keys, their own positions, the sink + window mask
                set_args(attn, mask=mask)
                return [k_out, v_out]
            _, slot_pos, q_pos, n_valid = idx
            k_rot = graph.call_function(ROPE, (k_out, slot_pos, *k_rope.args[2:]))
            att_dtype = _meta_dtype(get_arg(attn, "k")) or dtype
            k_att = graph.call_function(aten.to.dtype, (k_rot, att_dtype))
            v_att = graph.call_function(aten.to.dtype, (v_out, att_dtype))
        q_rope = _rope_of(get_arg(attn, "q"), "query")
        set_args(q_rope, positions=q_pos)
        set_args(attn, k=k_att, v=v_att, kv_len=n_valid)
        return [k_out, v_out]

    return rewrite


def sink_layout(cache: CacheLayout, sinks: int, window: int) -> CacheLayout:
    shape = (cache.batch, cache.kv_heads, sinks + window, cache.head_dim)
    specs = tuple((f"{kv}_{i}", shape, cache.dtype) for i in range(cache.layers) for kv in ("k", "v"))
    return replace(cache, ring=RingCache(sinks, window), tensors=specs)


@register("kv-sink-cache",
          params=(Param("sinks", int, 4, "first tokens kept for good (attention sinks)", low=0, high=MAX_TOKENS),
                  Param("window", int, 1024, "most recent tokens kept, in a ring buffer", low=1, high=MAX_TOKENS)),
          exact=False, exact_if=lambda args, length: args["sinks"] + args["window"] >= length,
          requires=plain_cache, slots=("cache", "positions", "attention"),
          # past the trained length: positions bounded by the cache, which spans the trained length
          plan=lambda target_len, trained_len: ["sinks=4,window=%d" % (trained_len - 4)] if target_len > trained_len else [],
          composes=("flash", "attention-chunked", "rope-scaling"),
          doc="StreamingLLM cache: sinks + a ring of recent tokens, RoPE by cache position; constant memory")
def kv_sink_cache(program: Program, sinks: int = 4, window: int = 1024) -> PassResult:
    _check_plain(program, "kv-sink-cache")
    layout = sink_layout(program.cache, sinks, window)
    names = [name for name, _, _ in layout.tensors]
    graphs = program.copy_graphs()
    dtype = getattr(torch, program.cache.dtype)
    for gm in graphs.values():
        replace_cache_io(gm, program.cache.layers, names,
                         _sink_rewrite(gm, sinks, window, program.cache.batch, dtype))
    return PassResult(program.with_entries(graphs, cache=layout), True)
