"""The ONNX lowering of ``lcc.rerope_attention``'s Self-Extend and DCA kinds against the op's reference.

One module calls the op in each case (prefill and decode against a longer cache); it is exported
once and run in onnxruntime. ReRoPE / Leaky ReRoPE are covered by test_ops.py.
"""

import numpy as np
import pytest
import torch

from lcc.ops.rerope import rerope_reference

CASES = [  # (name, Sq, Sk, kv_len, kind, window, group, chunk_size)
    ("self-extend-prefill", 20, 20, None, "self-extend", 4, 3, 0),
    ("self-extend-decode", 1, 24, 17, "self-extend", 4, 2, 0),
    ("dca-prefill", 20, 20, None, "dca", 2, 1, 7),
    ("dca-decode", 1, 24, 19, "dca", 1, 1, 6),
]


def _inputs(Sq, Sk, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, Sq, 16, generator=g), torch.randn(1, 2, Sk, 16, generator=g),
            torch.randn(1, 2, Sk, 16, generator=g))


class Remapped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for i, (_, Sq, Sk, *_) in enumerate(CASES):
            for j, t in enumerate(_inputs(Sq, Sk, i)):
                self.register_buffer(f"c{i}_{j}", t)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16)))

    def inputs(self, i):
        return [getattr(self, f"c{i}_{j}") for j in range(3)]

    def forward(self, x):
        outs = []
        for i, (_, _, _, kv_len, kind, window, group, chunk_size) in enumerate(CASES):
            q, k, v = self.inputs(i)
            outs.append(torch.ops.lcc.rerope_attention(q + x, k, v, None, self.inv_freq, 1.0,
                                                       None if kv_len is None else torch.tensor(kv_len), 0.25,
                                                       window, 0.0, "causal", kind=kind, group=group,
                                                       chunk_size=chunk_size))
        return tuple(outs)


@pytest.fixture(scope="module")
def run_all():
    import onnx_ir as ir
    import onnxruntime as ort

    from lcc.backends.onnx.export import export_graph

    module = Remapped()
    x = torch.zeros(())
    gm = torch.export.export(module, (x,), strict=False).module()
    names = [f"out{i}" for i in range(len(CASES))]
    model, lowered = export_graph(gm, (x,), None, ["x"], names, capacity=64)
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return module, session.run(None, {"x": np.zeros((), np.float32)}), lowered


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_new_kinds_match_reference(run_all, name):
    module, outs, _ = run_all
    i = [c[0] for c in CASES].index(name)
    _, _, _, kv_len, kind, window, group, chunk_size = CASES[i]
    q, k, v = module.inputs(i)
    want = rerope_reference(q, k, v, None, module.inv_freq, 1.0, None if kv_len is None else torch.tensor(kv_len),
                            0.25, window, 0.0, "causal", kind, group, chunk_size)
    np.testing.assert_allclose(outs[i], want.numpy(), atol=1e-5, rtol=0)


def test_new_kinds_lower_natively(run_all):
    _, _, lowered = run_all
    records = [r for r in lowered if r["op"] == "rerope_attention"]
    assert len(records) == len(CASES) and not [r for r in records if r["fallback"]]
    assert {r["how"].split(":")[0] for r in records} == {"self-extend", "dca"}


def test_bad_mapping_falls_back_with_its_reason():
    from lcc.backends.onnx.rerope import rerope_unsupported

    args = dict(mask="causal", kind="dca", window=6, leaky_factor=0.0, group=1, chunk_size=6)
    assert "local window" in rerope_unsupported(args)
    assert rerope_unsupported(dict(args, window=2)) is None
