"""Lowered prefill/decode in onnxruntime against the canonical program they came from (fp32, 1e-4)."""

import json
import os

import pytest
import torch

from lcc.runtime import generate_ids

TOL = 1e-4
PROMPT = 40  # longer than tiny-mistral's window (24) and the sliding pass's (8)
STEPS = 6

CASES = [  # (family, passes)
    ("llama", ()),
    ("mistral", ()),  # sliding window 24: GroupQueryAttention local_window_size
    ("qwen2", ()),  # one sliding layer, the rest full; qkv bias
    ("gpt-neox", ()),  # partial rotary (25%)
    ("phi3", ()),  # the model's own packed qkv_proj
    ("llama", ("sliding-window:window=8,sinks=2",)),  # sinks: mask predicate in the graph
]


def _ids(n, seed=0):
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def _max_err(got, want):
    return max(float((torch.as_tensor(g) - w).abs().max()) for g, w in zip(got, want))


@pytest.mark.parametrize("family,passes", CASES, ids=["-".join((f, *p)) for f, p in CASES])
def test_prefill_and_decode_match_program(lowered, family, passes):
    program, _, onnx_program = lowered(family, passes)
    ids = _ids(PROMPT)
    with torch.inference_mode():
        want = program.entries["prefill"](ids, *program.cache.empty())
    got = onnx_program.entries["prefill"](ids, *program.cache.empty())
    assert _max_err(got[:1], want[:1]) <= TOL, "prefill logits"
    assert _max_err(got[1:], want[1:]) <= TOL, "prefill cache"
    cache_want, cache_got = list(want[1:]), list(got[1:])
    token = want[0][:, -1].argmax(-1).view(1, 1)
    for step in range(STEPS):
        position = torch.tensor(PROMPT + step)
        with torch.inference_mode():
            want = program.entries["decode"](token, position, *cache_want)
        got = onnx_program.entries["decode"](token, position, *cache_got)
        assert _max_err(got[:1], want[:1]) <= TOL, f"decode logits, step {step}"
        cache_want, cache_got = list(want[1:]), list(got[1:])
        token = want[0][:, -1].argmax(-1).view(1, 1)
    assert _max_err(cache_got, cache_want) <= TOL, "decode cache"


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_greedy_tokens_match_program(lowered, family):
    program, _, onnx_program = lowered(family)
    ids = _ids(20, seed=1)
    assert onnx_program.generate(ids, 16) == generate_ids(program, ids, 16)


def test_artifact_layout(lowered):
    """Manifest, shared weights stored once, no temporary directory left beside the artifact."""
    program, out, _ = lowered("llama")
    manifest = json.loads((out / "onnx.json").read_text())
    for name in manifest["files"]:
        assert (out / name).is_file(), name
    assert {"prefill.onnx", "decode.onnx", "weights.bin", "model.onnx", "genai_config.json"} <= set(manifest["files"])
    assert manifest["fallbacks"] == []
    assert manifest["weights_bytes"]["stored_bytes"] < manifest["weights_bytes"]["referenced_bytes"]
    assert sorted(os.listdir(out.parent)) == ["artifact"]
    assert manifest["entries"]["decode"]["inputs"][:3] == ["input_ids", "position", "past_key_values.0.key"]
    assert manifest["entries"]["decode"]["cache_in_place"] and manifest["entries"]["prefill"]["cache_in_place"]


def _op_types(path):
    import collections

    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


MATMULS = {"llama": 5, "qwen2": 5}  # per layer: qkv, o, gate, up, down


@pytest.mark.parametrize("family", sorted(MATMULS))
def test_attention_blocks_fuse_into_packed_rotary_gqa(lowered, family):
    """Plain Llama-family layers lower as the genai builder's graph: one QKV MatMul, rotary inside
    GroupQueryAttention, residual add fused into the next norm; no RotaryEmbedding / Transpose left.
    (Numerical agreement with the program is test_prefill_and_decode_match_program.)"""
    program, out, _ = lowered(family)
    layers = program.cache.layers
    manifest = json.loads((out / "onnx.json").read_text())
    for entry in ("prefill", "decode"):
        ops = _op_types(out / f"{entry}.onnx")
        assert ops["GroupQueryAttention"] == layers and ops["RotaryEmbedding"] == 0 and ops["Transpose"] == 0
        assert ops["SkipSimplifiedLayerNormalization"] == 2 * layers  # every norm but the first
        assert ops["MatMul"] + ops["Gemm"] == MATMULS[family] * layers + 1  # + lm_head
        hows = [n["how"] for n in manifest["nodes"][entry] if n["op"] == "attention"]
        assert len(hows) == layers and all("packed QKV" in h for h in hows)


@pytest.mark.parametrize("family", ["gpt-neox", "phi3"])
def test_unfusable_blocks_keep_the_plain_lowering(lowered, family):
    """Rotary tables narrower than 8 (tiny gpt-neox 2, tiny phi3 4) are not GroupQueryAttention's rotary:
    RotaryEmbedding stays, and the result still matches (test_prefill_and_decode_match_program)."""
    program, out, _ = lowered(family)
    assert _op_types(out / "decode.onnx")["RotaryEmbedding"] == 2 * program.cache.layers


def test_model_packed_qkv_projection_is_reused(tmp_path):
    """Phi-3's own qkv_proj (one linear, sliced into q, k, v) feeds GroupQueryAttention as it is: no second
    packed weight is made, partial rotary (32 of 48 dims) runs inside the op, and the tokens match the program."""
    import transformers as T

    from lcc.backends.onnx import OnnxProgram, lower
    from lcc.capture.export import capture
    from lcc.models.loader import _finish
    from lcc.models.tiny import _COMMON, byte_tokenizer
    from lcc.passes import canonicalize

    torch.manual_seed(0)
    config = T.Phi3Config(**{**_COMMON, "hidden_size": 96, "num_attention_heads": 2, "num_key_value_heads": 1},
                          partial_rotary_factor=2 / 3)
    loaded = _finish(T.AutoModelForCausalLM.from_config(config), byte_tokenizer(), "phi3-head48", "0", "test")
    program = canonicalize(capture(loaded, capacity=64))
    manifest = lower(program, tmp_path / "a", genai=False)
    layers = program.cache.layers
    for entry in ("prefill", "decode"):
        ops = _op_types(tmp_path / "a" / f"{entry}.onnx")
        assert ops["GroupQueryAttention"] == layers and ops["RotaryEmbedding"] == 0
        assert ops["MatMul"] + ops["Gemm"] == 4 * layers + 1  # qkv_proj, o, gate_up, down; lm_head
    params = sum(p.numel() * 4 for p in loaded.model.parameters())
    assert manifest["weights_bytes"]["stored_bytes"] <= params * 1.01
    ids = _ids(20)
    runner = OnnxProgram(tmp_path / "a")
    with torch.inference_mode():
        want = program.entries["prefill"](ids, *program.cache.empty())
    assert _max_err(runner.entries["prefill"](ids, *program.cache.empty()), want) <= TOL
    assert runner.generate(ids, 8) == generate_ids(program, ids, 8)


def test_prefill_writes_the_cache_in_place(lowered):
    """Fused prefill: GroupQueryAttention writes the prompt's K/V into the bound cache buffer, rest untouched."""
    program, _, onnx_program = lowered("llama")
    ids = _ids(12)
    cache = [torch.full_like(c, 7.0) for c in program.cache.empty()]
    with torch.inference_mode():
        want = program.entries["prefill"](ids, *[c.clone() for c in cache])
    got = onnx_program.entries["prefill"](ids, *cache)
    assert all(g.data_ptr() == c.data_ptr() for g, c in zip(got[1:], cache))
    assert _max_err(got, want) <= TOL


def test_decode_updates_the_cache_in_place(lowered):
    """GroupQueryAttention over the cache: the returned cache is the input's memory, written at the position only."""
    program, _, onnx_program = lowered("llama")
    ids = _ids(12)
    _, *cache = onnx_program.entries["prefill"](ids, *program.cache.empty())
    before = [c.clone() for c in cache]
    token, position = torch.tensor([[7]]), torch.tensor(12)
    with torch.inference_mode():
        want = program.entries["decode"](token, position, *before)
    got = onnx_program.entries["decode"](token, position, *cache)
    assert all(g.data_ptr() == c.data_ptr() for g, c in zip(got[1:], cache))
    assert _max_err(got, want) <= TOL
    for g, b in zip(got[1:], before):  # every other slot untouched
        assert torch.equal(torch.cat([g[:, :, :12], g[:, :, 13:]], 2), torch.cat([b[:, :, :12], b[:, :, 13:]], 2))


def test_sinks_decode_is_not_in_place(lowered):
    """Sinks are no GroupQueryAttention mask: that decode keeps the sliced MatMul/Softmax and copies the cache."""
    _, out, _ = lowered("llama", ("sliding-window:window=8,sinks=2",))
    manifest = json.loads((out / "onnx.json").read_text())
    assert not manifest["entries"]["decode"]["cache_in_place"]


def test_lower_replaces_existing_directory_atomically(lowered, tmp_path):
    from lcc.backends.onnx import lower

    program, _, _ = lowered("llama")
    out = tmp_path / "art"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    lower(program, out, genai=False, entries=("decode",), optimize=False)
    assert not (out / "stale.txt").exists() and (out / "decode.onnx").is_file()
    assert sorted(os.listdir(tmp_path)) == ["art"]


def test_backend_protocol(lowered):
    """``lcc compile --backend onnx`` calls BACKEND.lower into an empty directory, then BACKEND.load."""
    from lcc.backends import get_backend

    program, out, _ = lowered("llama")
    result = lowered.results[("llama", ())]
    assert "prefill.onnx" in result.files and result.fallbacks == []
    assert set(result.native) == {"attention", "rope"}
    runnable = get_backend("onnx").load(out, None)
    ids = _ids(10)
    with torch.inference_mode():
        want = program.entries["prefill"](ids, *program.cache.empty())[0]
    assert float((runnable.entries["prefill"](ids, *program.cache.empty())[0] - want).abs().max()) <= TOL


def test_fused_graph_matches_program_in_torch(tiny):
    """The FX rewrite alone (packed QKV, rotary tables, tied embedding), run in torch by the fused op's own body,
    gives the program's logits and cache: the fusion is exact before onnxruntime is involved."""
    from lcc.backends.onnx.export import prepare_graph
    from lcc.capture.export import capture
    from lcc.passes import canonicalize

    program = canonicalize(capture(tiny("llama"), capacity=64))
    ids = _ids(20)
    for entry, args in (("prefill", (ids,)), ("decode", (ids[:, :1], torch.tensor(20)))):
        gm, lowered = prepare_graph(program.entries[entry], 64)
        assert any(n["op"] == "attention" and "packed QKV" in n["how"] for n in lowered)
        cache = program.cache.empty()
        if entry == "decode":
            with torch.inference_mode():
                cache = program.entries["prefill"](ids, *cache)[1:]
        with torch.inference_mode():
            want = program.entries[entry](*args, *cache)
            got = gm(*args, *[c.clone() for c in cache])
        assert _max_err(got, want) <= 1e-5, entry
