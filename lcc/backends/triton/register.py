"""Plug the Triton kernels into the ops: ``IMPLEMENTATIONS`` on CUDA and the ``triton`` lowerings."""

from __future__ import annotations

from lcc.backends.triton.attention import flash_attention
from lcc.backends.triton.decode import flash_decode
from lcc.backends.triton.linear_attention import linear_attention
from lcc.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLS
from lcc.ops.linear_attention import IMPLEMENTATIONS as LINEAR_IMPLS
from lcc.ops import registry
from lcc.ops.masks import MaskSpec


def _flash(q, k, v, kv_len, scale, mask, **args):
    return flash_attention(q, k, v, kv_len, scale, mask, **args)


def _decode(q, k, v, kv_len, scale, mask, **args):
    return flash_decode(q, k, v, kv_len, scale, mask, **args)


def _auto(q, k, v, kv_len, scale, mask, **args):
    """Flash decoding for one query under a causal/sliding mask, the flash kernel otherwise."""
    if q.shape[2] == 1 and MaskSpec.parse(mask).kind in ("causal", "sliding"):
        return flash_decode(q, k, v, kv_len, scale, mask)
    return flash_attention(q, k, v, kv_len, scale, mask)


def _linear(q, k, v, feature_map, projection, eps):
    return linear_attention(q, k, v, feature_map, projection, eps)


ATTENTION_IMPLS.update({("flash", "cuda"): _flash, ("decode", "cuda"): _decode, ("auto", "cuda"): _auto})
LINEAR_IMPLS.update({("auto", "cuda"): _linear, ("chunked", "cuda"): _linear})
registry.register_lowering("attention", "triton", _auto)
registry.register_lowering("linear_attention", "triton", _linear)
