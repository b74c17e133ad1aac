"""The ONNX lowerings of ``lcc.attention`` and ``lcc.rope`` against the ops' reference implementations.

One module calls each op in every case below; it is exported once (the exporter's fixed cost
dominates) and run in onnxruntime; each output is checked against the reference it names.
"""

import numpy as np
import pytest
import torch

from lcc.ops.attention import attention_reference
from lcc.ops.rope import rope_reference

MASKS = [
    "causal",
    "sliding:window=4,sinks=0",
    "sliding:window=4,sinks=2",
    "block-local:block=4,blocks=2",
    "dilated:segment=8,rate=2,levels=1,growth=2",  # some queries see no key at all
    "full",
]
# (name, Sq, Sk, kv_len): prefill (kv_len None), decode against a cache, chunked prefill
CASES = [("prefill", 12, 12, None), ("decode", 1, 16, 10), ("chunk", 3, 16, 10)]
ROPES = [  # (name, heads, head dim, rotary dim, attention_scaling, variant, first position)
    ("full", 4, 16, 16, 1.0, "", 0),
    ("partial", 4, 16, 4, 1.0, "", 3),
    ("scaled", 2, 8, 8, 1.3, "", 5),
    ("dynamic-ntk-long", 2, 8, 8, 1.0, "dynamic-ntk:base=10000,factor=4,original=6,dim=8", 0),
    ("dynamic-ntk-short", 2, 8, 8, 1.0, "dynamic-ntk:base=10000,factor=4,original=64,dim=8", 0),
    ("longrope-long", 2, 8, 8, 1.0, "longrope:original=6", 2),
]
SEQ = 9  # rope sequence length
RREROPE = [  # (name, Sq, Sk, kv_len, window, leaky_factor)
    ("rerope-prefill", 12, 12, None, 4, 0.0),
    ("leaky-prefill", 12, 12, None, 4, 0.25),
    ("leaky-decode", 1, 16, 10, 4, 0.25),
]


def _attention_inputs(Sq, Sk, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, Sq, 16, generator=g), torch.randn(1, 2, Sk, 16, generator=g),
            torch.randn(1, 2, Sk, 16, generator=g))


def _rope_inputs(heads, dim, rotary, variant, first, seed):
    g = torch.Generator().manual_seed(seed)
    half = rotary // 2 * (2 if variant.startswith("longrope") else 1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 2 * half, 2).float() / (2 * half)))
    return (torch.randn(1, heads, SEQ, dim, generator=g), torch.arange(first, first + SEQ)[None], inv_freq)


class AllOps(torch.nn.Module):
    """Every (mask, case) attention and every rope case, inputs as buffers, one output each."""

    def __init__(self):
        super().__init__()
        self.calls = []
        for i, (mask, (case, Sq, Sk, kv_len)) in enumerate((m, c) for m in MASKS for c in CASES):
            for j, t in enumerate(_attention_inputs(Sq, Sk, i)):
                self.register_buffer(f"a{i}_{j}", t)
            self.calls.append(("attention", i, mask, kv_len))
        for i, (name, heads, dim, rotary, scaling, variant, first) in enumerate(ROPES):
            for j, t in enumerate(_rope_inputs(heads, dim, rotary, variant, first, i)):
                self.register_buffer(f"r{i}_{j}", t)
            self.calls.append(("rope", i, scaling, variant))
        for i, (name, Sq, Sk, kv_len, window, leaky) in enumerate(RREROPE):
            for j, t in enumerate(_attention_inputs(Sq, Sk, 100 + i)):
                self.register_buffer(f"e{i}_{j}", t)
            self.calls.append(("e-rerope", i, (kv_len, window, leaky), None))
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16)))

    def inputs(self, kind, i):
        return [getattr(self, f"{kind[0]}{i}_{j}") for j in range(3)]

    def forward(self, x):
        outs = []
        for kind, i, a, b in self.calls:
            if kind == "attention":
                q, k, v = self.inputs(kind, i)
                kv_len = None if b is None else torch.tensor(b)
                outs.append(torch.ops.lcc.attention(q + x, k, v, kv_len, 0.25, a))
            elif kind == "e-rerope":
                q, k, v = self.inputs(kind, i)
                kv_len, window, leaky = a
                kv_len = None if kv_len is None else torch.tensor(kv_len)
                outs.append(torch.ops.lcc.rerope_attention(q + x, k, v, None, self.inv_freq, 1.0, kv_len, 0.25,
                                                           window, leaky, "causal"))
            else:
                t, pos, inv = self.inputs(kind, i)
                outs.append(torch.ops.lcc.rope(t + x, pos, inv, a, b))
        return tuple(outs)


@pytest.fixture(scope="module")
def run_all():
    """(module, onnxruntime outputs, per-node lowering records, ONNX op types)."""
    import onnx_ir as ir
    import onnxruntime as ort

    from lcc.backends.onnx.export import export_graph

    module = AllOps()
    x = torch.zeros(())
    gm = torch.export.export(module, (x,), strict=False).module()
    names = [f"out{i}" for i in range(len(module.calls))]
    model, lowered = export_graph(gm, (x,), None, ["x"], names, capacity=64)
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"x": np.zeros((), np.float32)})
    return module, outs, lowered, {n.op_type for n in model.graph.all_nodes()}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_attention_matches_reference(run_all, mask, case):
    module, outs, _, _ = run_all
    i = MASKS.index(mask) * len(CASES) + [c[0] for c in CASES].index(case)
    kv_len = CASES[[c[0] for c in CASES].index(case)][3]
    q, k, v = module.inputs("attention", i)
    want = attention_reference(q, k, v, None if kv_len is None else torch.tensor(kv_len), 0.25, mask)
    np.testing.assert_allclose(outs[i], want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [r[0] for r in ROPES])
def test_rope_matches_reference(run_all, name):
    module, outs, _, _ = run_all
    i = [r[0] for r in ROPES].index(name)
    _, _, _, _, scaling, variant, _ = ROPES[i]
    x, pos, inv = module.inputs("rope", i)
    want = rope_reference(x, pos, inv, scaling, variant)
    np.testing.assert_allclose(outs[len(MASKS) * len(CASES) + i], want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [r[0] for r in RREROPE])
def test_rerope_matches_reference(run_all, name):
    from lcc.ops.rerope import rerope_reference

    module, outs, _, _ = run_all
    i = [r[0] for r in RREROPE].index(name)
    _, _, _, kv_len, window, leaky = RREROPE[i]
    q, k, v = module.inputs("e-rerope", i)
    want = rerope_reference(q, k, v, None, module.inv_freq, 1.0, None if kv_len is None else torch.tensor(kv_len),
                            0.25, window, leaky, "causal")
    np.testing.assert_allclose(outs[len(MASKS) * len(CASES) + len(ROPES) + i], want.numpy(), atol=1e-5, rtol=0)


def test_ops_lower_natively(run_all):
    """Causal and sink-less sliding prefill use GroupQueryAttention; nothing falls back to a decomposition."""
    _, _, lowered, op_types = run_all
    assert not [r for r in lowered if r["fallback"]]
    gqa = [r for r in lowered if r["op"] == "attention" and r["how"].startswith("GroupQueryAttention")]
    assert len(gqa) == 2  # causal and sliding:window=4,sinks=0 prefill
    assert {"GroupQueryAttention", "RotaryEmbedding"} <= op_types


def test_unknown_rope_variant_falls_back_to_reference():
    from lcc.backends.onnx.register import LOWERINGS

    assert LOWERINGS["rope"].unsupported({"variant": "made-up:x=1"})
    assert LOWERINGS["rope"].unsupported({"variant": ""}) is None
