"""The ONNX lowerings of the lcc ops, registered with :func:`lcc.ops.registry.register_lowering`.

A lowering is a :class:`lcc.ops.registry.Lowering` whose ``emit`` is an onnxscript translation for
``torch.onnx.export``'s ``custom_translation_table`` (None: ``prepare`` only), whose ``unsupported``
says when a node must instead run as the op's reference decomposition, and whose ``prepare``
``(fx node, schema args, capacity) -> how`` puts a node into the form the translation expects.
"""

from __future__ import annotations

import torch

from lcc.backends.onnx.attention import (attention_onnx, cache_attention_onnx, masked_attention_onnx,
                                         prepare as prepare_attention)
from lcc.backends.onnx.fuse import packed_attention_onnx
from lcc.backends.onnx.rerope import prepare as prepare_rerope, rerope_unsupported
from lcc.backends.onnx.rope import rope_onnx, rope_unsupported
from lcc.ops import registry
from lcc.ops.registry import Lowering

BACKEND = "onnx"


def _mask_unsupported(args: dict) -> str | None:
    from lcc.ops.masks import MaskSpec

    if args.get("softcap"):
        return f"soft-capped attention (softcap={args['softcap']}) has no onnx lowering"

    try:
        MaskSpec.parse(args["mask"])
    except ValueError as e:
        return str(e)
    return None


LOWERINGS = {
    "attention": Lowering(attention_onnx, _mask_unsupported,
                          "com.microsoft GroupQueryAttention (plain blocks: packed QKV + rotary inside, the cache "
                          "written in place; else prefill, decode over the cache in place, bias "
                          "for other masks); else keys sliced to kv_len + grouped MatMul/Softmax with the "
                          "mask predicate in the graph",
                          prepare_attention),
    "rope": Lowering(rope_onnx, rope_unsupported, "opset-23 RotaryEmbedding, cos/sin of positions * inv_freq "
                     "(dynamic-ntk / longrope inv_freq chosen in the graph)"),
    "rerope_attention": Lowering(None, rerope_unsupported,
                                 "two RotaryEmbedding'd score matrices + mask predicate + MatMul/Softmax",
                                 prepare_rerope),
}

for _name, _lowering in LOWERINGS.items():
    if _name in registry.ops():  # an op this installation does not declare is skipped
        registry.register_lowering(_name, BACKEND, _lowering)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: every op with an onnx lowering, plus helpers."""
    table = {torch.ops.lcc_onnx.masked_attention.default: masked_attention_onnx,
             torch.ops.lcc_onnx.cache_attention.default: cache_attention_onnx,
             torch.ops.lcc_onnx.packed_attention.default: packed_attention_onnx}
    for opdef in registry.ops().values():
        lowering = opdef.lowerings.get(BACKEND)
        if lowering is not None and lowering.emit is not None:
            table[opdef.op] = lowering.emit
    return table
