"""Route a transformers model's attention and rotary embedding through lcc ops while tracing.

transformers 5 sends every family's attention through one ``AttentionInterface``;
registering an ``lcc`` implementation there makes capture generic instead of
per-family.  The rotary embedding is taken over the same way: each family's rotary
module returns ``(position_ids, inv_freq)`` in place of ``(cos, sin)`` and its
``apply_rotary_pos_emb`` becomes two ``lcc.rope`` calls, so the program keeps the
inverse frequencies as data that RoPE passes can rewrite.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import torch

import lcc.ops  # noqa: F401  (registers torch.ops.lcc.*)
from lcc.errors import UsageError
from lcc.models.support import modeling_modules, rotary_modules, rotary_tables

ATTN_IMPL = "lcc"
_state = threading.local()


@dataclass
class CacheState:
    """The explicit KV cache of one traced call: inputs, the write position, and the outputs."""

    mode: str  # "prefill" or "decode"
    k_in: list[torch.Tensor]
    v_in: list[torch.Tensor]
    position: torch.Tensor | None = None  # decode: int64 scalar tensor
    k_out: dict[int, torch.Tensor] = field(default_factory=dict)
    v_out: dict[int, torch.Tensor] = field(default_factory=dict)


def _current() -> CacheState:
    state = getattr(_state, "cache", None)
    if state is None:
        raise RuntimeError("the 'lcc' attention implementation is only usable inside lcc.capture")
    return state


def lcc_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                          sliding_window=None, softcap=None, **kwargs):
    """AttentionInterface entry: write K/V into the explicit cache, then one ``lcc.attention``.

    The layer's own sliding window, scaling (Gemma's ``query_pre_attn_scalar``, Granite's multiplier)
    and attention-logit soft-capping (Gemma 2) become the op's arguments."""
    state = _current()
    layer = module.layer_idx
    k_cache, v_cache = state.k_in[layer], state.v_in[layer]
    key = key.to(k_cache.dtype)
    value = value.to(v_cache.dtype)
    if state.mode == "prefill":
        s = key.shape[2]
        state.k_out[layer] = k_cache.slice_scatter(key, dim=2, start=0, end=s)
        state.v_out[layer] = v_cache.slice_scatter(value, dim=2, start=0, end=s)
        k_att, v_att, kv_len = key, value, None
    else:
        index = state.position.reshape(1)
        k_att = state.k_out[layer] = k_cache.index_copy(2, index, key)
        v_att = state.v_out[layer] = v_cache.index_copy(2, index, value)
        kv_len = state.position + 1
    mask = f"sliding:window={int(sliding_window)},sinks=0" if sliding_window else "causal"
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    cap = float(softcap or 0.0)
    out = torch.ops.lcc.attention(query, k_att.to(query.dtype), v_att.to(query.dtype), kv_len, scale, mask, "auto",
                                  cap)
    return out.transpose(1, 2).contiguous(), None


def lcc_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1, **kwargs):
    """Stands in for a family's ``apply_rotary_pos_emb``: ``cos`` carries positions, ``sin`` the rope info."""
    positions, rope = cos, sin
    inv_freq, scaling, variant = rope
    if unsqueeze_dim == 2:  # [B, S, H, D] layout
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    q = torch.ops.lcc.rope(q, positions, inv_freq, scaling, variant)
    k = torch.ops.lcc.rope(k, positions, inv_freq, scaling, variant)
    if unsqueeze_dim == 2:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    return q, k


def _register_interface() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPL, lcc_attention_forward)


LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rope_setting(model, layer_type, inv_freq, attention_scaling):
    """(inv_freq, attention_scaling, variant) that reproduce a rotary table's cos/sin for any positions.

    ``layer_type`` picks the table's ``rope_parameters`` when they are kept per layer type (Gemma 3)."""
    config = model.config
    params = dict(getattr(config, "rope_parameters", None) or {})
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    if params.get("rope_type", "default") not in LENGTH_DEPENDENT_ROPE:
        return inv_freq, float(attention_scaling), ""
    from lcc.models.spec import spec_from_model
    from lcc.ops.rope_scaling import METHODS, from_rope_parameters

    method, factor, original, extra = from_rope_parameters(params, config.max_position_embeddings)
    spec = spec_from_model(model, "")
    layer = list(getattr(config, "layer_types", None) or []).index(layer_type) if layer_type is not None else 0
    rot = spec.rotary_of(layer)
    setting = METHODS[method].setting(rot.theta, rot.rotary_dim, factor, original, **extra)
    return setting.inv_freq, float(setting.attention_scaling), setting.variant


def _rotary_forward(settings: dict):
    """A rotary module's stand-in forward: ``(position_ids, rope setting of the layer type)`` for ``(cos, sin)``."""
    def forward(x, position_ids, layer_type=None, *args, **kwargs):
        return position_ids, settings[layer_type if layer_type in settings else None]

    return forward


def check_layers(state: CacheState, layers: int) -> None:
    """Every decoder layer wrote its cache through the ``lcc`` attention; else a one-line refusal naming the first
    that did not (its attention bypassed transformers' AttentionInterface, so capture cannot own its cache)."""
    for layer in range(layers):
        if layer not in state.k_out:
            raise UsageError(f"layer {layer}: attention did not go through transformers' AttentionInterface, which "
                             "lcc capture needs: this model is not supported")


@contextlib.contextmanager
def lcc_hooks(model, state: CacheState):
    """Within this block, ``model`` runs its attention and rotary through lcc ops on ``state``'s cache."""
    _register_interface()
    saved_impl = model.config._attn_implementation
    rotaries = rotary_modules(model)
    modules = modeling_modules(model)
    saved_apply = [m.apply_rotary_pos_emb for m in modules]
    for r in rotaries:
        r.forward = _rotary_forward({t: _rope_setting(model, t, *table) for t, table in rotary_tables(r).items()})
    for m in modules:
        m.apply_rotary_pos_emb = lcc_apply_rotary_pos_emb
    model.config._attn_implementation = ATTN_IMPL
    _state.cache = state
    try:
        yield state
    finally:
        _state.cache = None
        model.config._attn_implementation = saved_impl
        for r in rotaries:
            del r.forward
        for m, f in zip(modules, saved_apply):
            m.apply_rotary_pos_emb = f
