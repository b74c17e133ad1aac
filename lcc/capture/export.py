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


def _export(module, args, dynamic_shapes):
    with torch.no_grad():
        ep = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    return ep.module()


def capture(loaded: LoadedModel, capacity: int, batch: int = 1, entries=("prefill", "decode"),
            cache_dtype: str | None = None) -> Program:
    """Export the requested entry points of ``loaded`` with a cache of ``capacity`` tokens."""
    spec = loaded.spec
    layout = CacheLayout(batch, capacity, spec.layers, spec.kv_heads, spec.head_dim, cache_dtype or spec.dtype)
    cache = layout.empty()
    seq = Dim("seq", min=2, max=capacity)
    example = torch.zeros(batch, min(capacity, 8), dtype=torch.long)
    prefill_shapes = ({1: seq}, tuple([None] * len(cache)))
    graphs = {}
    model = loaded.model.eval()
    if "prefill" in entries:
        graphs["prefill"] = _export(_Prefill(model, spec.layers, "last", False), (example, *cache), prefill_shapes)
    if "prefill_logits" in entries:
        graphs["prefill_logits"] = _export(_Prefill(model, spec.layers, "all", False), (example, *cache),
                                           prefill_shapes)
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
