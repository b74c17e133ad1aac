"""Plug the Triton kernels into the ops: their ``cuda`` implementations (:func:`registry.register_impl`).

The ``triton`` lowerings (the ``triton_op`` an op is compiled as) are registered beside those
ops in :mod:`lcc.backends.triton.ops`; an op with a kernel but no ``triton_op`` gets
:func:`kernel_only` as its lowering: the package calls the lcc op, whose cuda Impl is the kernel.
"""

from __future__ import annotations

import torch

from lcc.backends.triton.attention import flash_attention
from lcc.backends.triton.decode import flash_decode
from lcc.backends.triton.linear_attention import linear_attention
from lcc.ops import registry
from lcc.ops.linear_attention import whole_prefill

NO_TRITON_OP = "no triton_op: the package calls the registered lcc op"


def _no_triton_op(args: dict) -> str:
    return NO_TRITON_OP


def kernel_only(how: str) -> registry.Lowering:
    """The ``triton`` lowering of an op whose kernel is its cuda Impl only (not traced into a package)."""
    return registry.Lowering(emit=None, unsupported=_no_triton_op, how=how)


def _flash(q, k, v, kv_len, scale, mask, **args):
    return flash_attention(q, k, v, kv_len, scale, mask, **args)


def _decode(q, k, v, kv_len, scale, mask, **args):
    return flash_decode(q, k, v, kv_len, scale, mask, **args)


def _auto(q, k, v, kv_len, scale, mask, softcap=0.0, **args):
    """The kernel ``attention_kernels`` picks (flash decoding for one causal/sliding query, flash otherwise)."""
    from lcc.backends.triton.ops import attention_kernels  # needs torch.library.triton_op (torch >= 2.6)

    return attention_kernels(q, k, v, kv_len, scale, mask, softcap)


def _linear(q, k, v, feature_map, projection, eps, kv_len):
    return linear_attention(q, k, v, feature_map, projection, eps)


for _algo, _fn in (("flash", _flash), ("decode", _decode), ("auto", _auto)):
    registry.register_impl("attention", registry.Impl(_algo, "cuda", _fn, source=__name__))
for _algo in ("auto", "chunked"):
    registry.register_impl("linear_attention", registry.Impl(_algo, "cuda", _linear, whole_prefill, __name__))
registry.register_lowering("linear_attention", "triton", kernel_only("Triton chunked linear-attention kernel on CUDA"))

if hasattr(torch.library, "triton_op"):  # torch >= 2.6: the triton_ops and their ``triton`` lowerings
    from lcc.backends.triton import ops  # noqa: F401,E402
