"""``context-parallel``: the sequence split over N ranks of torch.distributed, prefill and decode.

Prefill entries shard the prompt first (``lcc.cp_shard``: head-tail by default, padded with
tokens past the end), rotate each token by its own position, run every ``lcc.attention`` as
``lcc.cp_attention`` (all-gather of K/V, then the layer's own mask and algorithm per chunk),
keep only the rank's tokens in its cache, and hand the LM head the same hidden state on every
rank so every rank returns the same logits: the last token's, from the rank that holds it
(``lcc.cp_gather_last``) where the entry returns the last position's logits, the whole
sequence's (``lcc.cp_gather_seq``) where it returns every position's.  All-gather of K/V is
chosen over a ring: it is exact by construction (the unchanged single-device kernel per
chunk, no merge of partial softmaxes), a single collective per layer that gloo and NCCL both provide, and at the
lengths where memory forces context parallelism the gathered K/V of one layer is small next
to the sharded cache of all layers (lcc/cost/comm.py prices both).  Decode replicates the
token on every rank; its K/V go to rank ``position % N`` and attention merges per-rank
partial outputs by log-sum-exp (``lcc.cp_decode_attention``).  The cache per rank holds
ceil(capacity / N) + 3 slots plus a spare slot non-owners write into, and a position code
per slot.  Ops and the method: :mod:`lcc.ops.context_parallel`.
"""

from __future__ import annotations

import operator
from dataclasses import replace

import torch
import torch.fx

from lcc.capture.program import CacheLayout, Program
from lcc.graph import named_args
from lcc.ops import context_parallel as cp
from lcc.passes.base import Param, PassResult, register
from lcc.passes.graph import ATTENTION, ROPE, get_arg, lcc_nodes, set_args
from lcc.passes.kv_cache import CacheSite, position_input, replace_cache_io

aten = torch.ops.aten
COMPOSES = ("flash", "attention-chunked", "sliding-window", "rope-scaling")
MAX_RANKS = 1024
_CASTS = (aten.to.dtype, aten._to_copy.default, aten.alias.default, aten.slice.Tensor)


def local_slots(capacity: int, ranks: int) -> int:
    """Cache slots a rank needs for ``capacity`` tokens: its prefill share with padding plus its decode share."""
    return -(-capacity // ranks) + 3


def cp_layout(cache: CacheLayout, ranks: int) -> CacheLayout:
    """Per layer K and V of this rank's slots (+1 spare) and the slots' position codes (int64)."""
    slots = local_slots(cache.capacity, ranks) + 1
    kv = (cache.batch, cache.kv_heads, slots, cache.head_dim)
    tensors = tuple(t for i in range(cache.layers) for t in (
        (f"k_{i}", kv, cache.dtype), (f"v_{i}", kv, cache.dtype), (f"pos_{i}", (cache.batch, slots), "int64")))
    return replace(cache, tensors=tensors)


def requires(program: Program) -> str | None:
    """A plain cache and only passes whose attention this pass keeps (one line naming the others)."""
    other = [p for p in program.passes if p.split(":")[0] not in COMPOSES]
    if other or not program.cache.plain:
        named = ", ".join(other) or program.cache.kind
        return (f"cannot compose with {named}: context-parallel composes with {', '.join(COMPOSES)} only "
                f"(and needs a plain K/V cache)")
    variants = {get_arg(n, "variant") for gm in program.entries.values() for n in lcc_nodes(gm, ROPE)} - {""}
    if variants:  # dynamic / longrope read the longest position of the call: each rank sees only its shard's
        return (f"the rotary variant {sorted(variants)[0]!r} depends on the whole sequence's length, which no "
                f"rank sees; use a static rope-scaling method")
    return None


def _insert_shard(gm: torch.fx.GraphModule, ranks: int, balance: str):
    """Shard the ids right after the inputs; every later use of the ids reads this rank's tokens."""
    graph = gm.graph
    ids = next(n for n in graph.nodes if n.op == "placeholder")
    first = next(n for n in graph.nodes if n.op not in ("placeholder", "get_attr"))
    with graph.inserting_before(first):
        shard = graph.call_function(torch.ops.lcc.cp_shard.default, (ids, ranks, balance))
        parts = [graph.call_function(operator.getitem, (shard, i)) for i in range(3)]
    ids.replace_all_uses_with(parts[0], delete_user_cb=lambda u: u is not shard)
    return ids, parts


def _logits_input(gm: torch.fx.GraphModule) -> tuple[torch.fx.Node, torch.fx.Node]:
    """(the LM head's input tensor before any slice or cast, the node that reads it on the way)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    node = out.args[0][0]
    while node.target is not aten.linear.default:
        node = node.args[0]
    reader, base = node, node.args[0]
    while base.op == "call_function" and base.target in _CASTS:
        reader, base = base, base.args[0]
    return base, reader


def _is_last_position(reader: torch.fx.Node, base: torch.fx.Node) -> bool:
    """Whether ``reader`` is ``base[:, -1:]`` (the capture's ``logits_to_keep=1`` slice)."""
    if reader.target is not aten.slice.Tensor or reader.args[0] is not base:
        return False
    dim, start, end, step = (list(reader.args[1:]) + [0, None, None, 1][len(reader.args) - 1:])[:4]
    return dim == 1 and start == -1 and (end is None or end >= 2**62) and step == 1


def _rewrite_prefill(gm: torch.fx.GraphModule, layers: int, names: list[str], ranks: int, balance: str) -> None:
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        graph.erase_node(node)
    ids, (_, positions, codes) = _insert_shard(gm, ranks, balance)
    for rope in lcc_nodes(gm, ROPE):
        set_args(rope, positions=positions)

    def rewrite(site: CacheSite, inputs: list[torch.fx.Node]) -> list[torch.fx.Node]:
        end = site.k_write.args[4]
        with graph.inserting_after(site.v_write):
            k_new, v_new = CacheSite.new_value(site.k_write), CacheSite.new_value(site.v_write)
            k = graph.call_function(aten.slice_scatter.default, (inputs[0], k_new, 2, 0, end))
            v = graph.call_function(aten.slice_scatter.default, (inputs[1], v_new, 2, 0, end))
            pos = graph.call_function(aten.slice_scatter.default, (inputs[2], codes, 1, 0, end))
        return [k, v, pos]

    replace_cache_io(gm, layers, names, rewrite)
    for attn in lcc_nodes(gm, ATTENTION):
        a = named_args(attn)
        with graph.inserting_after(attn):
            new = graph.call_function(torch.ops.lcc.cp_attention.default, (
                a["q"], a["k"], a["v"], a["scale"], a["mask"], a["algo"], a.get("softcap", 0.0), ranks, balance))
        new.meta.update(attn.meta)
        attn.replace_all_uses_with(new)
        graph.erase_node(attn)
    base, reader = _logits_input(gm)
    if _is_last_position(reader, base):  # prefill: only the last token reaches the LM head
        with graph.inserting_after(reader):
            last = graph.call_function(torch.ops.lcc.cp_gather_last.default, (base, ids, 1, ranks, balance))
        reader.replace_all_uses_with(last)
        graph.erase_node(reader)
    else:
        with graph.inserting_after(base):
            gathered = graph.call_function(torch.ops.lcc.cp_gather_seq.default, (base, ids, 1, ranks, balance))
        reader.replace_input_with(base, gathered)
    out = next(n for n in graph.nodes if n.op == "output")
    results = list(out.args[0])
    if len(results) == 2 + len(names):  # prefill_full: the stacked hidden states [L+1, B, S, H]
        with graph.inserting_before(out):
            results[1] = graph.call_function(torch.ops.lcc.cp_gather_seq.default, (results[1], ids, 2, ranks, balance))
        out.args = (tuple(results),)
    gm.recompile()


def _drop_stale_values(gm: torch.fx.GraphModule) -> None:
    """Drop the fake values (``meta["val"]``) of every node downstream of the shard: they still hold the captured
    sequence, where the rewritten graph holds this rank's ``local_len`` tokens.  The cost model gives them again
    in the capture's fake mode when it prices the program (:func:`lcc.cost.meta.with_values`: per-rank shapes),
    and only it reads them after this pass, the last one; recomputing them here took 4 s for smollm2."""
    shard = next(n for n in gm.graph.nodes if n.target is torch.ops.lcc.cp_shard.default)
    stale, todo = set(), [shard]
    while todo:
        node = todo.pop()
        for user in node.users:
            if user not in stale:
                stale.add(user)
                todo.append(user)
    for node in stale | {shard}:
        node.meta.pop("val", None)


def _rewrite_decode(gm: torch.fx.GraphModule, layers: int, names: list[str], ranks: int) -> None:
    graph = gm.graph
    position = position_input(gm)

    def rewrite(site: CacheSite, inputs: list[torch.fx.Node]) -> list[torch.fx.Node]:
        attn = site.attention
        a = named_args(attn)
        with graph.inserting_before(attn):
            slot_code = graph.call_function(torch.ops.lcc.cp_decode_slot.default, (position, inputs[2], ranks))
            slot, code = (graph.call_function(operator.getitem, (slot_code, i)) for i in range(2))
            k = graph.call_function(aten.index_copy.default, (inputs[0], 2, slot, CacheSite.new_value(site.k_write)))
            v = graph.call_function(aten.index_copy.default, (inputs[1], 2, slot, CacheSite.new_value(site.v_write)))
            pos = graph.call_function(aten.index_copy.default, (inputs[2], 1, slot, code))
            new = graph.call_function(torch.ops.lcc.cp_decode_attention.default, (
                a["q"], k, v, pos, position, a["scale"], a["mask"], a.get("softcap", 0.0), ranks))
        new.meta.update(attn.meta)
        attn.replace_all_uses_with(new)
        return [k, v, pos]

    replace_cache_io(gm, layers, names, rewrite)


@register("context-parallel",
          params=(Param("ranks", int, 2, "processes the sequence is split over", low=2, high=MAX_RANKS),
                  Param("balance", str, "head-tail", "how the prompt is split: head-tail (even causal work) or "
                        "contiguous", choices=cp.BALANCES)),
          exact=True, slots=("distribution",), last=True, requires=requires, plan=None, plan_with=(),
          doc="context parallelism over torch.distributed: K/V all-gathered in prefill, decode merged by lse")
def context_parallel(program: Program, ranks: int = 2, balance: str = "head-tail") -> PassResult:
    from lcc.errors import UsageError

    reason = requires(program)
    if reason:
        raise UsageError(f"context-parallel: {reason}")
    most = program.cache.capacity // cp.chunks_per_rank(balance)
    if ranks > most:
        raise UsageError(f"context-parallel: ranks={ranks} leaves a rank without tokens at the capacity "
                         f"{program.cache.capacity} ({balance}); use ranks=2..{most} or a larger --target-len")
    layout = cp_layout(program.cache, ranks)
    names = [name for name, _, _ in layout.tensors]
    graphs = program.copy_graphs()
    for name, gm in graphs.items():
        if name == "decode":
            _rewrite_decode(gm, program.cache.layers, names, ranks)
        else:
            _rewrite_prefill(gm, program.cache.layers, names, ranks, balance)
            _drop_stale_values(gm)
    meta = {**program.meta, "context_parallel": {"ranks": ranks, "balance": balance}}
    return PassResult(program.with_entries(graphs, cache=layout, meta=meta), True)
