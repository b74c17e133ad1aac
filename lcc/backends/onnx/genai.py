"""An onnxruntime-genai model for programs with a plain KV cache: ``model.onnx`` + ``genai_config.json``.

onnxruntime-genai drives one decoder graph with its own I/O convention.  We use its
*shared past/present buffer* mode (``past_present_share_buffer``): the cache inputs
``past_key_values.%d.key|value`` and outputs ``present.%d.key|value`` are one buffer of
[B, Hkv, max_length, D] that genai allocates (zeroed) and binds as both, which is exactly
the lcc cache layout when ``max_length`` equals the program's capacity.  ``model.onnx`` is

    If(seq_len == 1, then=decode(input_ids, position_ids[0], cache),
                     else=prefill(input_ids, cache) with logits zero-padded to [B, S, V])

built from the same two lowered entries as ``prefill.onnx``/``decode.onnx`` (so genai runs
exactly the compiled program); genai reads only the last position's logits.  Inputs are
``input_ids`` and ``position_ids`` (int64); there is no ``attention_mask`` (the program's
masks live in its attention ops).  Limits: one prompt per generator (a second multi-token
append would re-run prefill from position 0), ``max_length`` must stay the capacity.  For a cuda
target the config names the cuda provider (``onnxruntime-genai-cuda`` then runs it on the GPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import helper

MODEL = "model.onnx"
CONFIG = "genai_config.json"


def unsupported(layout) -> str | None:
    """Why this cache layout has no genai model (None when it is the standard one)."""
    if layout.tensors or layout.kind != "plain":
        return f"cache layout {layout.kind!r} is not onnxruntime-genai's plain K/V cache"
    if layout.dtype not in ("float32", "float16"):
        return f"cache dtype {layout.dtype} is not one onnxruntime-genai allocates"
    return None


def _produced(graph: onnx.GraphProto) -> set[str]:
    return {o for n in graph.node for o in n.output}


def _branch(graph: onnx.GraphProto, prefix: str, feeds: dict[str, str], inits: dict[str, str]) -> onnx.GraphProto:
    """``graph`` as an If branch: inputs read outer values ``feeds``, initializers ``inits``, the rest prefixed."""
    names = {**feeds, **inits}

    def r(name: str) -> str:
        return name if not name else names.get(name, prefix + name)

    nodes = []
    for n in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.name = prefix + n.name
        new.input[:] = [r(x) for x in n.input]
        new.output[:] = [r(x) for x in n.output]
        nodes.append(new)
    produced = _produced(graph)
    outputs = []
    for o in graph.output:
        if o.name not in produced:  # a passthrough: branch outputs must be produced inside the branch
            nodes.append(helper.make_node("Identity", [r(o.name)], [prefix + "out/" + o.name]))
            name = prefix + "out/" + o.name
        else:
            name = r(o.name)
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        vi.name = name
        outputs.append(vi)
    return helper.make_graph(nodes, prefix.strip("/"), [], outputs)


def _tensor_bytes(t: onnx.TensorProto, base: Path) -> bytes:
    """The stored bytes of an initializer, read from its external file when it has one."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return t.SerializeToString()
    info = {e.key: e.value for e in t.external_data}
    with open(base / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()


def _merge_initializers(prefill: onnx.GraphProto, decode: onnx.GraphProto, base: Path):
    """Outer-graph initializers of both branches, equal (name, bytes) stored once; per-branch renames.

    External data stays where it is (the composed model is written beside both entries' files).
    """
    outer = list(prefill.initializer)
    first = {t.name: t for t in prefill.initializer}
    renames = {"p/": {t.name: t.name for t in prefill.initializer}, "d/": {}}
    for t in decode.initializer:
        other = first.get(t.name)
        if other is not None and (other.data_type, list(other.dims)) == (t.data_type, list(t.dims)) \
                and _tensor_bytes(other, base) == _tensor_bytes(t, base):
            renames["d/"][t.name] = t.name
            continue
        name = t.name if other is None else "d/" + t.name
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = name
        outer.append(copy)
        renames["d/"][t.name] = name
    return outer, renames


def compose(prefill_path: Path, decode_path: Path, out_path: Path, layers: int) -> None:
    """Write the If-composed genai ``model.onnx`` (weights external) from the two lowered entries."""
    prefill = onnx.load(str(prefill_path), load_external_data=False)
    decode = onnx.load(str(decode_path), load_external_data=False)
    if Path(prefill_path).parent != Path(out_path).parent or Path(decode_path).parent != Path(out_path).parent:
        raise ValueError("compose writes model.onnx beside prefill.onnx and decode.onnx (their weights stay put)")
    inits, renames = _merge_initializers(prefill.graph, decode.graph, Path(out_path).parent)
    cache = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    dp = decode.graph
    pp = prefill.graph
    d_branch = _branch(dp, "d/", {"input_ids": "input_ids", "position": "lcc/position", **{c: c for c in cache}},
                       renames["d/"])
    p_branch = _branch(pp, "p/", {"input_ids": "input_ids", **{c: c for c in cache}}, renames["p/"])
    _pad_logits(p_branch)
    ids_in = next(i for i in pp.input if i.name == "input_ids")
    pos_in = helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, ["batch_size", "sequence_length"])
    ids = onnx.ValueInfoProto()
    ids.CopyFrom(ids_in)
    ids.type.tensor_type.shape.dim[0].dim_param = "batch_size"
    ids.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    cache_in = [i for i in pp.input if i.name in cache]
    outputs = [helper.make_tensor_value_info("logits", pp.output[0].type.tensor_type.elem_type,
                                             ["batch_size", "sequence_length", _dim(pp.output[0], 2)])]
    outputs += [o for o in pp.output[1:]]
    nodes = [
        helper.make_node("Constant", [], ["lcc/minus1"], value_ints=[-1]),
        helper.make_node("Reshape", ["position_ids", "lcc/minus1"], ["lcc/pos_flat"]),
        helper.make_node("Constant", [], ["lcc/zero"], value=helper.make_tensor("z", onnx.TensorProto.INT64, [], [0])),
        helper.make_node("Gather", ["lcc/pos_flat", "lcc/zero"], ["lcc/position"]),
        helper.make_node("Shape", ["input_ids"], ["lcc/seq"], start=1, end=2),
        helper.make_node("Constant", [], ["lcc/one"], value_ints=[1]),
        helper.make_node("Equal", ["lcc/seq", "lcc/one"], ["lcc/is_decode"]),
        helper.make_node("If", ["lcc/is_decode"], [o.name for o in outputs], then_branch=d_branch,
                         else_branch=p_branch),
    ]
    graph = helper.make_graph(nodes, "lcc_genai", [ids, pos_in, *cache_in], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=list(prefill.opset_import), ir_version=prefill.ir_version,
                              producer_name="lcc")
    onnx.save_model(model, str(out_path))


def _dim(value_info: onnx.ValueInfoProto, i: int):
    d = value_info.type.tensor_type.shape.dim[i]
    return d.dim_value if d.HasField("dim_value") else d.dim_param


def _pad_logits(branch: onnx.GraphProto) -> None:
    """Prefill's [B, 1, V] last-position logits, zero-padded in front to genai's [B, S, V]."""
    logits = branch.output[0].name
    padded = "p/logits_padded"
    branch.node.extend([
        helper.make_node("Shape", ["input_ids"], ["p/pad/seq"], start=1, end=2),
        helper.make_node("Constant", [], ["p/pad/one"], value_ints=[1]),
        helper.make_node("Sub", ["p/pad/seq", "p/pad/one"], ["p/pad/front"]),
        helper.make_node("Constant", [], ["p/pad/z1"], value_ints=[0]),
        helper.make_node("Constant", [], ["p/pad/z4"], value_ints=[0, 0, 0, 0]),
        helper.make_node("Concat", ["p/pad/z1", "p/pad/front", "p/pad/z4"], ["p/pad/pads"], axis=0),
        helper.make_node("Pad", [logits, "p/pad/pads"], [padded]),
    ])
    branch.output[0].name = padded
    shape = branch.output[0].type.tensor_type.shape
    shape.dim[1].ClearField("dim_value")
    shape.dim[1].dim_param = "sequence_length"


def provider_options(target) -> list[dict]:
    """genai's ``session_options.provider_options`` for an lcc target: ``[{"cuda": {}}]``, or none (the CPU)."""
    return [{"cuda": {}}] if target.is_cuda else []


def write_config(out_dir: Path, program, token_ids: dict, target, model_file: str = MODEL) -> dict:
    """``genai_config.json`` for the composed model (greedy search, max_length = capacity) on ``target``."""
    spec, layout = program.spec, program.cache
    config = {
        "model": {
            "type": "decoder",
            "context_length": layout.capacity,
            "vocab_size": spec.vocab,
            **{k: v for k, v in token_ids.items() if v is not None},
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider_options(target)},
                "filename": model_file,
                "head_size": layout.head_dim,
                "hidden_size": spec.hidden,
                "num_attention_heads": spec.heads,
                "num_hidden_layers": layout.layers,
                "num_key_value_heads": layout.kv_heads,
                "inputs": {"input_ids": "input_ids", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "top_p": 1.0,
                   "temperature": 1.0, "repetition_penalty": 1.0, "min_length": 0, "max_length": layout.capacity,
                   "past_present_share_buffer": True, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
    (Path(out_dir) / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


def token_ids(tokenizer) -> dict:
    """bos/eos/pad ids for the config, read from a transformers tokenizer (eos required by genai)."""
    if tokenizer is None:
        return {}
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos, "pad_token_id": pad}
