"""Export one entry graph of an lcc program to ONNX with the lcc ops' translations.

The entry graph is first copied and its lcc op nodes put into their ONNX form (or, when
the backend has no lowering for a node, pointed at the op's reference so the export
decomposes it into plain ONNX ops); it is then re-exported with ``torch.export`` (sequence
length dynamic for prefill) and converted by ``torch.onnx.export`` with the
``custom_translation_table`` of :mod:`lcc.backends.onnx.register`.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.fx

from lcc.backends.nodes import prepare_nodes
from lcc.backends.onnx.fuse import fuse_attention_blocks, share_tied_embedding
from lcc.backends.onnx.register import BACKEND, translation_table
from lcc.capture.program import copy_graph_module
from lcc.ops import registry

OPSET = 23


class ExportError(RuntimeError):
    """An entry could not be exported (typically: an op without an onnx lowering whose reference does not trace)."""


def _reference_call(opdef: registry.OpDef):
    """A plain function the export traces through: the custom op's own Python body (same schema), or its reference."""
    body = registry.eager_body(opdef)
    if body is None:
        return registry.reference_call(opdef)

    def call(*args):
        return body(*args)

    call.__name__ = f"{opdef.name}_reference"
    return call


_NOOP_CASTS = (torch.ops.aten.to.dtype, torch.ops.aten.alias.default)


def strip_noops(gm: torch.fx.GraphModule) -> int:
    """Drop metadata asserts and same-dtype casts (a quarter of a captured graph; they slow the export)."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == torch.ops.aten._assert_tensor_metadata.default and not node.users:
            gm.graph.erase_node(node)
            removed += 1
        elif node.target in _NOOP_CASTS and isinstance(node.args[0], torch.fx.Node):
            src, val = node.args[0].meta.get("val"), node.meta.get("val")
            if isinstance(src, torch.Tensor) and isinstance(val, torch.Tensor) and src.dtype == val.dtype:
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                removed += 1
    return removed


def prepare_graph(gm: torch.fx.GraphModule, capacity: int) -> tuple[torch.fx.GraphModule, list[dict]]:
    """A copy of ``gm`` ready for export, and per lcc node how it is lowered (``native`` or ``fallback``)."""
    gm = copy_graph_module(gm)
    strip_noops(gm)
    share_tied_embedding(gm)
    lowered = fuse_attention_blocks(gm, capacity)
    for r in prepare_nodes(gm, BACKEND, _reference_call, context=capacity):
        record = {k: r[k] for k in ("op", "node", "layer")}
        how = f"reference decomposition: {r['why']}" if r["fallback"] else r["how"]
        lowered.append({**record, "fallback": r["fallback"], "how": how})
    return gm, lowered


def io_names(entry: str, layout) -> tuple[list[str], list[str]]:
    """ONNX input and output names of an entry; a plain cache is named as onnxruntime-genai names it."""
    if layout.tensors:
        cache_in = [f"past.{name}" for name, _, _ in layout.tensors]
        cache_out = [f"present.{name}" for name, _, _ in layout.tensors]
    else:
        cache_in = [f"past_key_values.{i}.{kv}" for i in range(layout.layers) for kv in ("key", "value")]
        cache_out = [f"present.{i}.{kv}" for i in range(layout.layers) for kv in ("key", "value")]
    inputs = ["input_ids"] + (["position"] if entry == "decode" else []) + cache_in
    hidden = ["hidden_states"] if entry == "prefill_full" else []  # lcc diff's entry: every layer's hidden state
    return inputs, ["logits", *hidden] + cache_out


def export_entry(program, entry: str):
    """(``onnx_ir`` model of a program entry, per lcc node how it was lowered)."""
    inputs, outputs = io_names(entry, program.cache)
    return export_graph(program.entries[entry], program.example_inputs(entry),
                        program.dynamic_shapes(entry, "sequence_length"), inputs, outputs, program.cache.capacity)


def export_graph(gm: torch.fx.GraphModule, args: tuple, dynamic_shapes, input_names: list[str],
                 output_names: list[str], capacity: int):
    """(``onnx_ir`` model of any graph calling lcc ops, per lcc node how it was lowered).

    ``capacity`` bounds the positions a mask is checked over (rows that see no key).
    """
    gm, lowered = prepare_graph(gm, capacity)
    try:
        with torch.no_grad():
            ep = torch.export.export(gm, args, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:
        fallbacks = sorted({r["op"] for r in lowered if r["fallback"]})
        if not fallbacks:
            raise
        raise ExportError(f"torch.export could not trace the reference decomposition of {', '.join(fallbacks)} "
                          f"(no onnx lowering; the reference branches on sizes or data): "
                          f"{str(e).strip().splitlines()[0][:300]}") from e
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" on every export
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(ep, opset_version=OPSET, dynamo=True, input_names=input_names,
                                             output_names=output_names, custom_translation_table=translation_table(),
                                             optimize=False, verbose=False)
    finally:
        quiet.setLevel(level)
    model = onnx_program.model
    light_optimize(model)
    return model, lowered


def light_optimize(model) -> None:
    """Constant folding and onnxscript's opset-23 fusions (RMSNormalization), without its pattern rewriter.

    ``torch.onnx.export(optimize=True)`` also runs onnxscript's general rewrite rules, whose
    matcher takes ~40 s on a 30-layer model; onnxruntime's own optimiser does that work later.
    """
    import onnxscript.optimizer as optimizer
    from onnxscript.rewriter import onnx_fusions

    optimizer.fold_constants(model, onnx_shape_inference=False)
    onnx_fusions.fuse(model)
    optimizer.remove_unused_nodes(model)
    trim_unused_outputs(model)
    fuse_rms_norms(model)


def fuse_rms_norms(model) -> int:
    """Opset-23 ``RMSNormalization`` -> onnxruntime's fused norms (same attributes, same math); returns how many.

    ``Add`` + norm (a residual add and the next layer's norm) becomes one ``com.microsoft``
    ``SkipSimplifiedLayerNormalization`` whose fourth output is the sum the residual path goes on
    with; a norm with no such add becomes ``SimplifiedLayerNormalization``.  This is the form
    onnxruntime-genai's builder emits; onnxruntime's own optimiser does not fuse the standard op
    (smollm2's decode graph kept 60 Add and 61 norm nodes).
    """
    import onnx_ir as ir

    graph_outputs = set(map(id, model.graph.outputs))
    n = 0
    for node in list(model.graph):
        if node.op_type != "RMSNormalization" or node.domain != "" or len(node.inputs) != 2:
            continue
        axis = node.attributes.get("axis")
        if axis is not None and axis.as_int() != -1:
            continue
        x, gamma = node.inputs
        add = x.producer()
        a, b = (add.inputs if add is not None and add.op_type == "Add" and add.domain == "" else (None, None))
        same = (a is not None and a.shape is not None and b.shape is not None and len(a.shape) == 3
                and a.shape == b.shape and id(x) not in graph_outputs)
        eps = node.attributes.get("epsilon")
        attrs = {"epsilon": ir.AttrFloat32("epsilon", eps.as_float() if eps is not None else 1e-5)}
        if same:
            fused = ir.Node("com.microsoft", "SkipSimplifiedLayerNormalization", [a, b, gamma], attrs, num_outputs=4)
            _swap(model.graph, node, fused, "_skip")
            _take_over(x, fused.outputs[3], "_sum")  # the residual path reads the sum the fused op returns
            if not add.outputs[0].uses():
                model.graph.remove(add, safe=True)
        else:
            _swap(model.graph, node, ir.Node("", "SimplifiedLayerNormalization", [x, gamma],
                                             {**attrs, "axis": ir.AttrInt64("axis", -1)}, num_outputs=1), "_sln")
        n += 1
    if n and "com.microsoft" not in model.opset_imports:
        model.opset_imports["com.microsoft"] = 1
    return n


def _take_over(old, new, suffix: str) -> None:
    """``new`` (an onnx_ir value) replaces every use of ``old``, with its name, shape and type."""
    import onnx_ir as ir

    new.name, new.shape, new.type = old.name + suffix, old.shape, old.type
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)


def _swap(graph, node, new, suffix: str) -> None:
    """Put ``new`` where ``node`` is, its first output standing for ``node``'s; remove ``node``."""
    graph.insert_before(node, new)
    _take_over(node.outputs[0], new.outputs[0], suffix)
    graph.remove(node, safe=True)


def trim_unused_outputs(model) -> None:
    """Drop trailing outputs nothing reads from contrib nodes (GroupQueryAttention's ``output_qk``).

    The exporter declares every output of a schema; onnxruntime refuses a GroupQueryAttention whose
    ``output_qk`` exists without its ``qk_output`` attribute.
    """
    graph_outputs = set(map(id, model.graph.outputs))
    for node in model.graph:
        if node.domain != "com.microsoft":
            continue
        n = len(node.outputs)
        while n > 1 and not node.outputs[n - 1].uses() and id(node.outputs[n - 1]) not in graph_outputs:
            n -= 1
        if n < len(node.outputs):
            node.resize_outputs(n)
