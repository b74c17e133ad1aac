"""A ``--target cuda`` ONNX artifact: fp16 GroupQueryAttention graphs for the CUDA provider, the cache bound in place.

One artifact of tiny-mistral (its config's sliding window gives GroupQueryAttention a ``local_window_size``),
lowered for cuda on this machine.  Oracles: the HF config (heads, window), HF eager (fp32, and fp16 for the
half-precision noise of lcc's rule, :func:`lcc.diff.logit_limit`), onnxruntime's own ``session.run`` driven
step by step in the test, onnxruntime's schema for the quantized-cache attributes.  The fp16 graphs run on
the CPU provider here; the device-resident cache is checked on a GPU only.
"""

import json
import types

import numpy as np
import onnx
import pytest
import torch

from lcc.errors import UsageError

PROMPT, STEPS = 30, 4


def cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    """(fp16 program, artifact dir, Lowered, HF spec) of tiny-mistral lowered for ``cuda``, capacity 64."""
    from lcc.backends.onnx import BACKEND
    from lcc.capture import capture
    from lcc.models import load_model
    from lcc.passes import canonicalize

    loaded = load_model("tiny-mistral", dtype=BACKEND.default_dtype("cuda"))
    program = canonicalize(capture(loaded, capacity=64))
    out = tmp_path_factory.mktemp("onnx-cuda") / "a"
    result = BACKEND.lower(program, out, target="cuda", dtype="float16")
    return program, out, result, loaded.model.config


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def test_cuda_artifact_records_its_target_and_the_cuda_provider(cuda_artifact):
    _, out, result, _ = cuda_artifact
    manifest = json.loads((out / "onnx.json").read_text())
    assert manifest["target"] == "cuda"
    assert manifest["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert any("CUDAExecutionProvider" in n for n in result.notes)
    config = json.loads((out / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [{"cuda": {}}]


def test_cuda_graphs_are_fp16_group_query_attention_with_the_model_window(cuda_artifact):
    _, out, _, config = cuda_artifact
    for name in ("prefill.onnx", "decode.onnx"):
        proto = onnx.load(str(out / name), load_external_data=False)
        floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        matrices = [t for t in proto.graph.initializer if t.data_type in floats and len(t.dims) == 2]
        # the weights and the rotary cos/sin tables GroupQueryAttention reads
        assert matrices and all(t.data_type == onnx.TensorProto.FLOAT16 for t in matrices), name
        logits = next(o for o in proto.graph.output if o.name == "logits")
        assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
        assert len(gqa) == config.num_hidden_layers, name
        for node in gqa:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert node.domain == "com.microsoft"
            assert attrs["num_heads"] == config.num_attention_heads
            assert attrs["kv_num_heads"] == config.num_key_value_heads
            assert attrs["local_window_size"] == config.sliding_window
            assert attrs["do_rotary"] == 1
            assert attrs["scale"] == pytest.approx(config.head_dim ** -0.5)
        # saved as exported: no fp32 island the CPU provider's optimiser would wrap around fp16 nodes
        assert not [n for n in proto.graph.node if n.name.startswith("InsertedPrecisionFreeCast")], name


def test_cuda_fp16_graph_runs_on_the_cpu_provider_within_the_half_precision_rule(cuda_artifact):
    from lcc.backends.onnx import OnnxProgram
    from lcc.diff import logit_limit
    from lcc.models import load_model

    program, out, _, _ = cuda_artifact
    ids = _ids(PROMPT)  # longer than the window (24): the window is in force
    with torch.inference_mode():
        want = load_model("tiny-mistral").model(ids).logits[:, -1:].float()
        half = load_model("tiny-mistral", dtype="float16").model(ids).logits[:, -1:].float()
    runner = OnnxProgram(out, providers=["CPUExecutionProvider"])
    got = runner.entries["prefill"](ids, *program.cache.empty())
    assert got[0].dtype == torch.float16 and all(c.dtype == torch.float16 for c in got[1:])
    noise = float((half - want).abs().max())
    assert float((got[0].float() - want).abs().max()) <= logit_limit(want, noise=noise)


def test_iobinding_decode_gives_the_tokens_of_plain_session_runs(cuda_artifact):
    """The runner (IOBinding, device 'cpu', the cache bound in place) against onnxruntime's plain run of each step."""
    import onnxruntime as ort

    from lcc.backends.onnx import OnnxProgram

    program, out, _, _ = cuda_artifact
    ids = _ids(PROMPT, seed=1)
    sessions = {e: ort.InferenceSession(str(out / f"{e}.onnx"), providers=["CPUExecutionProvider"])
                for e in ("prefill", "decode")}
    names = [i.name for i in sessions["prefill"].get_inputs()][1:]
    logits, *cache = sessions["prefill"].run(None, {"input_ids": ids.numpy(),
                                                    **dict(zip(names, (c.numpy() for c in program.cache.empty())))})
    want = []
    for step in range(STEPS):
        want.append(int(logits[0, -1].argmax()))
        feeds = {"input_ids": np.array([[want[-1]]]), "position": np.array(PROMPT + step), **dict(zip(names, cache))}
        logits, *cache = sessions["decode"].run(None, feeds)
    runner = OnnxProgram(out, providers=["CPUExecutionProvider"])
    assert runner.meta["device"] == "cpu"
    assert runner.generate(ids, STEPS) == want
    start = program.cache.empty()
    _, *after = runner.entries["prefill"](ids, *start)
    _, *after_decode = runner.entries["decode"](torch.tensor([[want[0]]]), torch.tensor(PROMPT), *after)
    assert [c.data_ptr() for c in after_decode] == [c.data_ptr() for c in after] == [c.data_ptr() for c in start]


@pytest.mark.skipif(cuda_provider(), reason="this onnxruntime has the CUDA provider")
def test_a_cuda_artifact_without_the_cuda_provider_is_one_line(cuda_artifact):
    from lcc.backends.onnx import BACKEND

    _, out, _, _ = cuda_artifact
    with pytest.raises(UsageError, match="no CUDAExecutionProvider") as e:
        BACKEND.load(out)
    assert "\n" not in str(e.value) and "--target cpu" in str(e.value)


def test_cuda_target_defaults_to_float16_and_refuses_float32():
    from lcc.backends.onnx import BACKEND

    assert BACKEND.default_dtype("cuda:sm_80") == "float16" and BACKEND.default_dtype(None) == "float32"
    with pytest.raises(UsageError, match=r"^--dtype float32 with --target cuda: .*float16") as e:
        BACKEND.lower(None, "unused", target="cuda", dtype="float32")  # refused before the program is read
    assert "\n" not in str(e.value)


def test_kv_quant_is_refused_with_groupqueryattentions_quantized_cache_as_the_reason(tmp_path):
    """lcc's KIVI cache is not GroupQueryAttention's (fixed symmetric scales); the line names what onnxruntime has."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    from lcc.backends.onnx import BACKEND
    from lcc.capture.program import CacheLayout
    from lcc.ops.kv_cache import KVQuantFormat

    schema = next(s for s in C.get_all_operator_schema() if s.name == "GroupQueryAttention"
                  and s.domain == "com.microsoft")
    layout = CacheLayout(1, 64, 2, 2, 16, quant=KVQuantFormat("int", 8, 16, "channel", 8))
    program = types.SimpleNamespace(cache=layout, entries={})
    with pytest.raises(UsageError, match=r"^kv-quant \(int8") as e:
        BACKEND.lower(program, tmp_path / "a", target="cpu", dtype="float32")
    line = str(e.value)
    assert "\n" not in line and not (tmp_path / "a").exists()
    if "k_quant_type" in schema.attributes:
        assert "k_quant_type" in line and "kv_cache_bit_width" in line
    else:
        assert "no quantized-cache attributes" in line


@pytest.mark.skipif(not torch.cuda.is_available() or not cuda_provider(),
                    reason="needs a CUDA device and onnxruntime's CUDA provider (onnxruntime-gpu)")
def test_on_cuda_the_cache_stays_on_the_device_bound_in_place(cuda_artifact):
    from lcc.backends.onnx import OnnxProgram
    from lcc.runtime import generate_ids

    program, out, _, _ = cuda_artifact
    runner = OnnxProgram(out)
    assert runner.providers[0] == "CUDAExecutionProvider" and runner.meta["device"] == "cuda:0"
    ids = _ids(PROMPT, seed=2)
    start = program.cache.empty("cuda")
    logits, *cache = runner.entries["prefill"](ids.cuda(), *start)
    ptrs = [c.data_ptr() for c in start]
    for step in range(STEPS):  # every step writes into the same device buffers: nothing crosses to the host
        assert all(c.is_cuda for c in cache) and [c.data_ptr() for c in cache] == ptrs
        token = logits[:, -1].argmax(-1).view(1, 1)
        logits, *cache = runner.entries["decode"](token, torch.tensor(PROMPT + step), *cache)
    on_cpu = OnnxProgram(out, providers=["CPUExecutionProvider"])
    want, got = on_cpu.entries["prefill"](ids, *program.cache.empty())[0], runner.entries["prefill"](
        ids, *program.cache.empty("cuda"))[0]
    assert float((got.float() - want.float()).abs().max()) <= 0.02 + 1e-3 * float(want.float().abs().max())
    assert len(generate_ids(runner, ids, STEPS)) == STEPS
