"""fp16 ONNX graphs: weights, activations, cache and GroupQueryAttention in fp16, run by onnxruntime's CPU provider.

The oracles: each op's reference computed in fp32 on the same fp16-rounded inputs, and the fp16 program the
graph was lowered from.  Tolerances: the op outputs are rounded to fp16 (half an ulp, 2^-11 relative), so a
few ulps of the largest value; logits, lowered against the program in the same dtype, within issue 16's
fp16 floor 0.02 + 1e-3 x max|logits| (the tiny families' fp16 noise is about 0.004).  bfloat16 is refused:
onnxruntime's CPU provider has no bfloat16 MatMul.
"""

import numpy as np
import pytest
import torch

from lcc.errors import UsageError
from lcc.ops.attention import attention_reference
from lcc.ops.rope import rope_reference
from tests.backends.onnx.test_ops import CASES, MASKS, ROPES, SEQ

EPS16 = 2.0 ** -10
PROMPT, STEPS = 40, 4


def fp16_limit(ref) -> float:
    return 0.02 + 1e-3 * float(torch.as_tensor(ref).float().abs().max())


class HalfOps(torch.nn.Module):
    """Every (mask, case) attention and rope case with fp16 activations (rope's inv_freq stays fp32, as HF's)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        for i, (mask, (_, Sq, Sk, kv_len)) in enumerate((m, c) for m in MASKS for c in CASES):
            g = torch.Generator().manual_seed(i)
            for j, (h, s) in enumerate(((4, Sq), (2, Sk), (2, Sk))):
                self.register_buffer(f"a{i}_{j}", torch.randn(1, h, s, 16, generator=g).half())
            self.calls.append(("attention", i, mask, kv_len))
        for i, (_, heads, dim, rotary, scaling, variant, first) in enumerate(ROPES):
            g = torch.Generator().manual_seed(50 + i)
            half = rotary // 2 * (2 if variant.startswith("longrope") else 1)
            self.register_buffer(f"r{i}_0", torch.randn(1, heads, SEQ, dim, generator=g).half())
            self.register_buffer(f"r{i}_1", torch.arange(first, first + SEQ)[None])
            self.register_buffer(f"r{i}_2", 1.0 / (10000 ** (torch.arange(0, 2 * half, 2).float() / (2 * half))))
            self.calls.append(("rope", i, scaling, variant))

    def inputs(self, kind, i):
        return [getattr(self, f"{kind[0]}{i}_{j}") for j in range(3)]

    def forward(self, x):
        outs = []
        for kind, i, a, b in self.calls:
            if kind == "attention":
                q, k, v = self.inputs(kind, i)
                outs.append(torch.ops.lcc.attention(q + x, k, v, None if b is None else torch.tensor(b), 0.25, a))
            else:
                t, pos, inv = self.inputs(kind, i)
                outs.append(torch.ops.lcc.rope(t + x, pos, inv, a, b))
        return tuple(outs)


@pytest.fixture(scope="module")
def run_half():
    """(module, onnxruntime outputs, the ONNX model proto)."""
    import onnx_ir as ir
    import onnxruntime as ort

    from lcc.backends.onnx.export import export_graph

    module = HalfOps()
    x = torch.zeros((), dtype=torch.float16)
    gm = torch.export.export(module, (x,), strict=False).module()
    model, _ = export_graph(gm, (x,), None, ["x"], [f"out{i}" for i in range(len(module.calls))], capacity=64)
    proto = ir.to_proto(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return module, session.run(None, {"x": np.zeros((), np.float16)}), proto


def test_half_graph_is_valid_onnx_and_computes_in_fp16(run_half):
    import onnx

    _, outs, proto = run_half
    onnx.checker.check_model(proto, full_check=True)
    assert {o.dtype for o in outs} == {np.dtype(np.float16)}
    gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    assert gqa and {n.op_type for n in proto.graph.node} >= {"RotaryEmbedding", "Softmax"}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_half_attention_matches_fp32_reference(run_half, mask, case):
    module, outs, _ = run_half
    c = [c[0] for c in CASES].index(case)
    i = MASKS.index(mask) * len(CASES) + c
    kv_len = CASES[c][3]
    q, k, v = (t.float() for t in module.inputs("attention", i))
    want = attention_reference(q, k, v, None if kv_len is None else torch.tensor(kv_len), 0.25, mask)
    atol = 2 * EPS16 * max(1.0, float(want.abs().max()))
    np.testing.assert_allclose(outs[i].astype(np.float32), want.numpy(), atol=atol, rtol=0)


@pytest.mark.parametrize("name", [r[0] for r in ROPES])
def test_half_rope_matches_fp32_reference(run_half, name):
    module, outs, _ = run_half
    i = [r[0] for r in ROPES].index(name)
    x, pos, inv = module.inputs("rope", i)
    want = rope_reference(x.float(), pos, inv, ROPES[i][4], ROPES[i][5])
    atol = 2 * EPS16 * max(1.0, float(want.abs().max()))
    np.testing.assert_allclose(outs[len(MASKS) * len(CASES) + i].astype(np.float32), want.numpy(), atol=atol, rtol=0)


MODEL_CASES = [  # (family, passes): the fused packed-QKV GQA, windows, partial rotary, the masked fallback
    ("llama", ()),
    ("mistral", ()),
    ("gpt-neox", ()),
    ("llama", ("sliding-window:window=8,sinks=2",)),
]


@pytest.fixture(scope="module")
def lowered_half(tmp_path_factory):
    from lcc.backends.onnx import BACKEND, OnnxProgram
    from lcc.capture import capture
    from lcc.models import load_model
    from lcc.passes import apply_passes, canonicalize, parse_pass

    cache = {}

    def get(family, passes=()):
        if (family, passes) not in cache:
            program = canonicalize(capture(load_model(f"tiny-{family}", dtype="float16"), capacity=64))
            program = apply_passes(program, [parse_pass(p) for p in passes])
            out = tmp_path_factory.mktemp(f"onnx16-{family}") / "a"
            result = BACKEND.lower(program, out, dtype="float16", entries=("prefill", "decode"))
            cache[family, passes] = program, out, result, OnnxProgram(out)
        return cache[family, passes]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("family,passes", MODEL_CASES, ids=["-".join((f, *p)) for f, p in MODEL_CASES])
def test_half_model_prefill_and_decode_match_the_fp16_program(lowered_half, family, passes):
    program, _, _, onnx_program = lowered_half(family, passes)
    ids = torch.randint(0, 256, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = program.entries["prefill"](ids, *program.cache.empty())
    got = onnx_program.entries["prefill"](ids, *program.cache.empty())
    assert got[0].dtype == torch.float16 and all(c.dtype == torch.float16 for c in got[1:])
    assert float((got[0].float() - want[0].float()).abs().max()) <= fp16_limit(want[0])
    cache_want, cache_got = list(want[1:]), list(got[1:])
    token = want[0][:, -1].argmax(-1).view(1, 1)
    for step in range(STEPS):
        position = torch.tensor(PROMPT + step)
        with torch.inference_mode():
            want = program.entries["decode"](token, position, *cache_want)
        got = onnx_program.entries["decode"](token, position, *cache_got)
        assert float((got[0].float() - want[0].float()).abs().max()) <= fp16_limit(want[0]), f"decode step {step}"
        cache_want, cache_got = list(want[1:]), list(got[1:])
        token = want[0][:, -1].argmax(-1).view(1, 1)


@pytest.mark.slow
def test_half_artifact_stores_fp16_weights_once(lowered_half):
    import onnx

    program, out, result, _ = lowered_half("llama")
    weight_bytes = sum(p.numel() * 2 for p in program.entries["prefill"].parameters())
    for name in ("prefill.onnx", "decode.onnx"):
        proto = onnx.load(str(out / name), load_external_data=False)
        big = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert big and {t.data_type for t in big} == {onnx.TensorProto.FLOAT16}, name
    assert (out / "weights.bin").stat().st_size <= 1.1 * weight_bytes
    assert any("GroupQueryAttention" in how for how in result.native.values())


@pytest.mark.slow
def test_onnxruntime_genai_runs_the_fp16_model_on_the_cpu(lowered_half):
    pytest.importorskip("onnxruntime_genai")
    from lcc.runtime import generate_ids
    from tests.backends.onnx.test_genai import genai_generate

    program, out, _, _ = lowered_half("llama")
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    assert genai_generate(out, ids.numpy(), 16) == generate_ids(program, ids, 16)


def test_bfloat16_is_refused_with_one_line():
    from lcc.backends import check_dtype
    from lcc.backends.onnx import BACKEND

    with pytest.raises(UsageError, match=r"^--dtype bfloat16: the onnx backend emits float32, float16 \(") as e:
        check_dtype(BACKEND, "bfloat16")
    assert "\n" not in str(e.value)
    check_dtype(BACKEND, "float16")


def test_a_program_in_another_dtype_is_refused(tiny, tmp_path):
    from lcc.backends.onnx import BACKEND
    from lcc.capture import capture
    from lcc.passes import canonicalize

    program = canonicalize(capture(tiny("llama"), capacity=16, entries=("decode",)))
    with pytest.raises(RuntimeError, match="whose weights are float32: load the model in float16"):
        BACKEND.lower(program, tmp_path / "a", dtype="float16", entries=("decode",))
    assert not (tmp_path / "a").exists()
