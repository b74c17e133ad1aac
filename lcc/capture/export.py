"""``torch.export`` of a HF causal LM into an lcc program with an explicit KV cache.

The sequence length of ``prefill`` is dynamic (2..capacity); ``decode`` takes one
token and its position.  The cache is graph inputs and outputs owned by lcc, never
HF's Cache objects, so passes and backends see and change its layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim

from lcc.capture.hooks import CacheState, check_layers, lcc_hooks
from lcc.capture.program import CacheLayout, Program
from lcc.models.loader import LoadedModel


class _Prefill(nn.Module):
    def __init__(self, model, layers: int, logits: str, hidden: bool):
        super().__init__()
        self.model, self.layers, self.logits, self.hidden = model, layers, logits, hidden

    def forward(self, input_ids, *cache):
        state = CacheState("prefill", list(cache[0::2]), list(cache[1::2]))
        s = input_ids.shape[1]
        positions = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], s)
        with lcc_hooks(self.model, state):
            out = self.model(input_ids=input_ids, position_ids=positions, use_cache=False,
                             logits_to_keep=1 if self.logits == "last" else 0,
                             output_hidden_states=self.hidden)
        check_layers(state, self.layers)
        flat = [t for i in range(self.layers) for t in (state.k_out[i], state.v_out[i])]
        if self.hidden:
            return (out.logits, torch.stack(out.hidden_states), *flat)
        return (out.logits, *flat)


class _Decode(nn.Module):
    def __init__(self, model, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, position, *cache):
        state = CacheState("decode", list(cache[0::2]), list(cache[1::2]), position=position)
        positions = position.reshape(1, 1).expand(input_ids.shape[0], 1)
        with lcc_hooks(self.model, state):
            out = self.model(input_ids=input_ids, position_ids=positions, use_cache=False)
        check_layers(state, self.layers)
        flat = [t for i in range(self.layers) for t in (state.k_out[i], state.v_out[i])]
        return (out.logits, *flat)


RANGES = "lcc_range_constraints"  # GraphModule.meta key: the export's ranges of its shape symbols


def _export(module, args, dynamic_shapes):
    """The exported program's runnable module, with its range constraints in ``meta[RANGES]``: its nodes' values
    speak the export's shape symbols, so a graph a pass rewrote can be made an exported program again without
    exporting it (:func:`lcc.backends.torch_export.exported_program`)."""
    with torch.no_grad():
        ep = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    gm = ep.module()
    gm.meta[RANGES] = dict(ep.range_constraints)
    return gm


def _every_position(prefill: torch.fx.GraphModule, layout: CacheLayout) -> torch.fx.GraphModule | None:
    """``prefill_logits`` made from ``prefill``'s graph, or None where it is not of the form below.

    The two exports differ in one node: HF takes the last position (``logits_to_keep=1``) with
    ``aten.slice(hidden, 1, -1, max)`` before the LM head, and every position (``0``) with ``aten.alias(hidden)``.
    That node is swapped and the values from it to the logits are propagated again, in the export's fake mode
    (:func:`lcc.cost.meta.with_values`): the graph an export of every position gives, without a third export."""
    from lcc.capture.program import copy_graph_module
    from lcc.cost.meta import with_values

    gm = copy_graph_module(prefill)
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    node, chain = output.args[0][0], []  # the logits, back through the ops that made them from the hidden states
    while node.target != torch.ops.aten.slice.Tensor:
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if node.op != "call_function" or len(inputs) != 1 or len(node.users) != 1 or len(chain) > 8:
            return None
        chain.append(node)
        node = inputs[0]
    if tuple(node.args[1:]) != (1, -1, torch.iinfo(torch.long).max) or len(node.users) != 1:
        return None
    with graph.inserting_before(node):
        alias = graph.call_function(torch.ops.aten.alias.default, (node.args[0],))
    node.replace_all_uses_with(alias)
    graph.erase_node(node)
    for n in chain:
        n.meta.pop("val", None)
    if with_values(gm, layout) is not gm:
        return None
    gm.recompile()
    return gm


def capture(loaded: LoadedModel, capacity: int, batch: int = 1, entries=("prefill", "decode"),
            cache_dtype: str | None = None) -> Program:
    """Export the requested entry points of ``loaded`` with a cache of ``capacity`` tokens."""
    spec = loaded.spec
    layout = CacheLayout(batch, capacity, spec.layers, spec.kv_heads, spec.head_dim, cache_dtype or spec.dtype)
    # left uninitialised: export reads only the cache's shapes and dtypes (zero-filling 32k slots took seconds)
    cache = [torch.empty(s, dtype=getattr(torch, d)) for s, d in zip(layout.shapes(), layout.dtypes())]
    seq = Dim("seq", min=2, max=capacity)
    example = torch.zeros(batch, min(capacity, 8), dtype=torch.long)
    prefill_shapes = ({1: seq}, tuple([None] * len(cache)))
    graphs = {}
    model = loaded.model.eval()
    if "prefill" in entries:
        graphs["prefill"] = _export(_Prefill(model, spec.layers, "last", False), (example, *cache), prefill_shapes)
    if "prefill_logits" in entries:
        every = _every_position(graphs["prefill"], layout) if "prefill" in graphs else None
        graphs["prefill_logits"] = every if every is not None else _export(
            _Prefill(model, spec.layers, "all", False), (example, *cache), prefill_shapes)
    if "prefill_full" in entries:
        graphs["prefill_full"] = _export(_Prefill(model, spec.layers, "all", True), (example, *cache), prefill_shapes)
    if "decode" in entries:
        one = torch.zeros(batch, 1, dtype=torch.long)
        graphs["decode"] = _export(_Decode(model, spec.layers), (one, torch.tensor(8), *cache), None)
    generation = getattr(loaded.model, "generation_config", None)
    return Program(spec=spec, cache=layout, entries=graphs, stage="captured",
                   meta={"model_id": spec.model_id, "weights_hash": loaded.weights_hash,
                         "hf_config": loaded.model.config.to_dict(),  # what the hf backend writes back
                         "generation_config": generation.to_dict() if generation is not None else None})
