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
import sys
import threading
from dataclasses import dataclass, field

import torch

import lcc.ops  # noqa: F401  (registers torch.ops.lcc.*)

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
                          sliding_window=None, **kwargs):
    """AttentionInterface entry: write K/V into the explicit cache, then one ``lcc.attention``."""
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
    out = torch.ops.lcc.attention(query, k_att.to(query.dtype), v_att.to(query.dtype), kv_len, scale, mask, "auto")
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


def _rotary_modules(model):
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]


def _modeling_modules(model):
    names = {type(m).__module__ for m in model.modules()}
    return [sys.modules[n] for n in names if n.startswith("transformers.models.")
            and hasattr(sys.modules[n], "apply_rotary_pos_emb")]


def _register_interface() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPL, lcc_attention_forward)


LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rope_setting(model, rotary):
    """(inv_freq, attention_scaling, variant) that reproduce ``rotary``'s cos/sin for any positions."""
    params = getattr(model.config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") not in LENGTH_DEPENDENT_ROPE:
        return rotary.inv_freq, float(rotary.attention_scaling), ""
    from lcc.ops.rope_scaling import METHODS, from_rope_parameters
    from lcc.models.spec import spec_from_model

    method, factor, original, extra = from_rope_parameters(params, model.config.max_position_embeddings)
    rot = spec_from_model(model, "").rotary
    setting = METHODS[method].setting(rot.theta, rot.rotary_dim, factor, original, **extra)
    return setting.inv_freq, float(setting.attention_scaling), setting.variant


@contextlib.contextmanager
def lcc_hooks(model, state: CacheState):
    """Within this block, ``model`` runs its attention and rotary through lcc ops on ``state``'s cache."""
    _register_interface()
    saved_impl = model.config._attn_implementation
    rotaries = _rotary_modules(model)
    modules = _modeling_modules(model)
    saved_apply = [m.apply_rotary_pos_emb for m in modules]
    for r in rotaries:
        rope = _rope_setting(model, r)
        r.forward = (lambda rope: lambda x, position_ids, *a, **kw: (position_ids, rope))(rope)
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
