"""kv-quant and kv-sink-cache on tiny-llama: the rewritten decode against HF eager given the same cache.

Oracles: HF eager's own decode step fed (through a ``DynamicCache``) exactly the keys and
values the rewritten program's cache stands for (dequantized codes; or the sink + window
tokens rotated by their place in the cache, StreamingLLM sec. 3.2); the plain program where
the passes must not change anything; token-by-token decoding for the evaluation entries.
"""

import pytest
import torch

from lcc.capture.export import capture
from lcc.capture.program import CacheLayout
from lcc.errors import UsageError
from lcc.ops.kv_cache import KVQuantFormat, dequantize
from lcc.ops.rope import rope_reference
from lcc.passes import apply_passes, canonicalize
from lcc.passes.kv_cache import cache_positions, quantized_layout, ring_slot, sink_layout, slot_tokens

ENTRIES = ("prefill", "decode", "prefill_full")


@pytest.fixture(scope="module")
def tiny_llama():
    from lcc.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def program(tiny_llama):
    return canonicalize(capture(tiny_llama, capacity=96, entries=ENTRIES))


def ids(n, seed=0):
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def run(program, tokens, prompt=8):
    """Prefill ``prompt`` tokens, then decode the rest teacher-forced; logits per decoded token and the caches."""
    logits, *cache = program.entries["prefill"](tokens[:, :prompt], *program.cache.empty())
    out, caches = [logits[:, -1]], [cache]
    for t in range(prompt, tokens.shape[1]):
        logits, *cache = program.entries["decode"](tokens[:, t:t + 1], torch.tensor(t), *cache)
        out.append(logits[:, -1])
        caches.append(cache)
    return torch.cat(out), caches


@torch.inference_mode()
def hf_step(loaded, keys, values, token, position):
    """HF eager decoding ``token`` at ``position`` over per-layer (already rotated) keys and values."""
    from transformers import DynamicCache

    from lcc.diff import hf_eager

    cache = DynamicCache(config=loaded.model.config)
    for i, (k, v) in enumerate(zip(keys, values)):
        cache.update(k.float().clone(), v.float().clone(), i)
    with hf_eager(loaded.model) as model:
        out = model(input_ids=token, position_ids=torch.tensor([[position]]), past_key_values=cache, use_cache=True)
    return out.logits[:, -1]


# --- kv-quant ------------------------------------------------------------------------------------------------------


def dequantized(cache, fmt, layers, n):
    """Per-layer K and V [B, H, n, D] that a quantized cache holding n tokens stands for."""
    per = len(cache) // (2 * layers)
    nq = fmt.n_quantized(n)
    out = {"k": [], "v": []}
    for i in range(layers):
        for j, which in enumerate(("k", "v")):
            parts = cache[(2 * i + j) * per:(2 * i + j + 1) * per]
            codes, scale, zero = parts[0], parts[1], parts[2] if fmt.kind == "int" else None
            rows = nq // fmt.group if fmt.axis(which) == "channel" else nq
            x = dequantize(codes[:, :, :nq], scale[:, :, :rows], None if zero is None else zero[:, :, :rows], fmt,
                           fmt.axis(which))
            ring = parts[-1][:, :, torch.arange(nq, n) % fmt.ring].float()
            out[which].append(torch.cat([x, ring], 2))
    return out["k"], out["v"]


@pytest.mark.parametrize("spec", ["kv-quant:bits=2,group=8,residual=8",
                                  "kv-quant:format=fp8,group=16,keys=token,residual=0",
                                  "kv-quant:bits=4,group=16,keys=channel,residual=0"])
def test_quantized_decode_equals_hf_eager_over_the_dequantized_cache(tiny_llama, program, spec):
    q = apply_passes(program, [spec])
    fmt = KVQuantFormat.parse(q.cache.kind.removeprefix("quantized:"))
    tokens = ids(40)
    logits, caches = run(q, tokens)
    plain = run(program, tokens)[0] if fmt.bits == 2 else None
    for t in (24, 39):  # decode of token t writes it (a group may leave the ring), then reads tokens 0..t
        keys, values = dequantized(caches[t - 7], fmt, 2, t + 1)
        keys, values = [k[:, :, :t] for k in keys], [v[:, :, :t] for v in values]  # HF brings token t itself
        want = hf_step(tiny_llama, keys, values, tokens[:, t:t + 1], t)
        got = logits[t - 7:t - 6]
        oracle_err = float((got - want).abs().max())
        assert oracle_err < 2e-3, (t, oracle_err)  # the current token is fp16 in the ring, fp32 in HF
        if plain is not None:  # the oracle sees the quantization, not just the model
            assert float((got - plain[t - 7:t - 6]).abs().max()) > 5 * oracle_err


def test_evaluation_entry_gives_the_logits_decoding_would(program):
    """prefill_full under kv-quant: position i's logits = decoding token i through the quantized cache."""
    q = apply_passes(program, ["kv-quant:bits=4,group=8,residual=8"])
    tokens = ids(40, seed=1)
    decoded, _ = run(q, tokens, prompt=2)
    with torch.inference_mode():
        full = q.entries["prefill_full"](tokens, *q.cache.empty())[0][0]
        prefill = q.entries["prefill"](tokens, *q.cache.empty())[0][0, -1]
        plain_last = program.entries["prefill"](tokens, *program.cache.empty())[0][0, -1]
    torch.testing.assert_close(full[1:], decoded, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prefill, plain_last, atol=1e-5, rtol=1e-5)  # the prompt itself: full precision


def test_int8_stays_close_to_the_plain_program(program):
    q = apply_passes(program, ["kv-quant:bits=8,group=8,residual=8"])
    tokens = ids(30, seed=2)
    a, _ = run(q, tokens)
    b, _ = run(program, tokens)
    assert float((a - b).abs().max()) < 2e-2 and bool((a.argmax(-1) == b.argmax(-1)).all())


def test_the_cache_is_quantized_in_the_signature(program):
    q = apply_passes(program, ["kv-quant:bits=4,group=16,residual=32"])
    assert q.cache.kind == "quantized:int4:group=16,keys=channel,residual=32"
    dtypes = {d for _, _, d in q.cache.tensors}
    assert dtypes == {"uint8", "float16"}  # no fp32 cache tensor anywhere
    gm = q.entries["decode"]
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    assert names[:2] == ["input_ids", "position"] and names[2:] == [n for n, _, _ in q.cache.tensors]
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.lcc.attention_kvq.default in targets and torch.ops.lcc.attention.default not in targets
    assert torch.ops.aten.index_copy.default not in targets


@pytest.mark.parametrize("fmt,ideal_bits", [("int8:group=32,keys=channel,residual=128", 8),
                                            ("int4:group=32,keys=channel,residual=128", 4),
                                            ("int2:group=32,keys=channel,residual=128", 2),
                                            ("fp8:group=32,keys=channel,residual=128", 8)])
@pytest.mark.parametrize("capacity", [4096, 8192])
def test_bytes_per_token_within_10_percent_of_ideal(fmt, ideal_bits, capacity):
    """smollm2-135m's cache (30 layers, 3 kv heads, head dim 64), measured on the tensors themselves."""
    plain = CacheLayout(1, capacity, 30, 3, 64, "float16")
    f = KVQuantFormat.parse(fmt)
    layout = quantized_layout(plain, f)
    measured = sum(t.numel() * t.element_size() for t in layout.empty()) / capacity
    fp16 = plain.bytes() / capacity
    stats = (2 if f.kind == "int" else 1) * 2 * 64 / f.group  # fp16 scale (+ zero) per group, per token per head
    ideal = fp16 * ideal_bits / 16 + 30 * 3 * 2 * stats + 30 * 3 * 2 * 128 * 64 * 2 / capacity
    assert layout.bytes() / capacity == measured
    assert abs(measured - ideal) <= 0.10 * ideal, (measured, ideal)


# --- kv-sink-cache -------------------------------------------------------------------------------------------------


def test_ring_slots_and_cache_positions_follow_streamingllm():
    """Simulate the cache as a list: sinks stay, the window slides; positions are places in the cache."""
    sinks, window = 3, 5
    slots = [None] * (sinks + window)
    for t in range(40):
        slot = int(ring_slot(torch.tensor(t), sinks, window))
        slots[slot] = t
        n = t + 1
        held = torch.tensor([-1 if s is None else s for s in slots])
        filled = held >= 0
        assert torch.equal(slot_tokens(torch.tensor(n), sinks, window)[filled], held[filled])
        kept = sorted(s for s in slots if s is not None)
        assert kept == sorted(set(range(min(n, sinks))) | set(range(max(sinks, n - window), n)))
        pos, q_pos = cache_positions(torch.tensor(n), sinks, window)
        # in cache order (sinks, then the window oldest first) the positions are 0, 1, 2, ...
        order = sorted(range(len(slots)), key=lambda s: slots[s] if slots[s] is not None else 10**9)[:len(kept)]
        assert pos[order].tolist() == list(range(len(kept)))
        assert int(q_pos) == len(kept) - 1


def test_sink_decode_equals_hf_eager_at_cache_positions(tiny_llama, program):
    """Past the window: HF eager over the sinks + window keys, rotated at positions 0..S+W-2, query at S+W-1."""
    sinks, window = 4, 16
    s = apply_passes(program, [f"kv-sink-cache:sinks={sinks},window={window}"])
    tokens = ids(130, seed=3)  # past the captured capacity (96): the ring has no end
    logits, caches = run(s, tokens)
    inv_freq = tiny_llama.model.model.rotary_emb.inv_freq
    for t in (30, 49, 129):
        before = caches[t - 8]  # the cache decode step t reads: tokens 0..t-1
        kept = list(range(sinks)) + list(range(t - window + 1, t))  # token t evicts t - window
        slots = torch.tensor([int(ring_slot(torch.tensor(j), sinks, window)) for j in kept])
        positions = torch.arange(len(kept))[None]
        keys = [rope_reference(before[2 * i][:, :, slots], positions, inv_freq) for i in range(2)]
        values = [before[2 * i + 1][:, :, slots] for i in range(2)]
        want = hf_step(tiny_llama, keys, values, tokens[:, t:t + 1], len(kept))
        torch.testing.assert_close(logits[t - 7:t - 6], want, atol=1e-4, rtol=1e-4)


def test_sink_cache_changes_nothing_while_the_text_fits(program):
    s = apply_passes(program, ["kv-sink-cache:sinks=4,window=20"])
    tokens = ids(24, seed=4)
    a, _ = run(s, tokens)
    b, _ = run(program, tokens)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        full = s.entries["prefill_full"](tokens, *s.cache.empty())[0]
        ref = program.entries["prefill_full"](tokens, *program.cache.empty())[0]
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)


def test_long_prefill_is_sliding_window_attention_with_sinks(program):
    s = apply_passes(program, ["kv-sink-cache:sinks=4,window=16"])
    w = apply_passes(program, ["sliding-window:window=16,sinks=4"])
    tokens = ids(50, seed=5)
    with torch.inference_mode():
        a = s.entries["prefill_full"](tokens, *s.cache.empty())[0]
        b = w.entries["prefill_full"](tokens, *w.cache.empty())[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_long_prefill_leaves_the_cache_decoding_would(program):
    """Prefill of 40 tokens fills the slots as 20 + 20 decode steps do (layer 0's K/V depend on tokens only)."""
    s = apply_passes(program, ["kv-sink-cache:sinks=4,window=16"])
    tokens = ids(40, seed=6)
    with torch.inference_mode():
        _, *once = s.entries["prefill"](tokens, *s.cache.empty())
    _, caches = run(s, tokens, prompt=20)
    assert [t.shape for t in once] == [t.shape for t in caches[-1]] == [(1, 2, 20, 16)] * 4
    torch.testing.assert_close(once[0], caches[-1][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(once[1], caches[-1][1], atol=1e-6, rtol=1e-6)


def test_generation_runs_past_the_window_in_constant_memory(tiny_llama, program):
    from lcc.runtime import generate_ids

    s = apply_passes(program, ["kv-sink-cache:sinks=4,window=16"])
    assert s.cache.bytes() == 2 * 2 * 2 * 20 * 16 * 4 and s.cache.kind == "sink-ring:sinks=4,window=16"
    out = generate_ids(s, ids(10, seed=7), 150)
    assert len(out) == 150  # 160 tokens through a 20-slot cache, past the captured capacity of 96


def test_sink_cache_sizes():
    layout = sink_layout(CacheLayout(1, 8192, 30, 3, 64), 4, 1020)
    assert layout.bytes() == 30 * 2 * 3 * 1024 * 64 * 4
    assert CacheLayout(**{**layout.__dict__, "tensors": [list(t) for t in layout.tensors]}) == layout  # JSON


# --- both ----------------------------------------------------------------------------------------------------------


def test_passes_do_not_mutate_their_input_and_do_not_stack(program):
    before = {k: str(gm.graph) for k, gm in program.entries.items()}
    q = apply_passes(program, ["kv-quant:bits=8"])
    apply_passes(program, ["kv-sink-cache:sinks=2,window=8"])
    assert {k: str(gm.graph) for k, gm in program.entries.items()} == before
    assert program.cache.kind == "plain" and not program.cache.tensors
    with pytest.raises(UsageError, match="already"):
        apply_passes(q, ["kv-sink-cache"])
    with pytest.raises(UsageError, match="multiple of group"):
        apply_passes(program, ["kv-quant:group=12"])  # head dim 16
    with pytest.raises(UsageError, match="not one of"):
        apply_passes(program, ["kv-quant:bits=3"])


def test_sink_cache_refuses_layers_with_their_own_window():
    from lcc.models import load_model

    p = canonicalize(capture(load_model("tiny-mistral"), capacity=64, entries=("decode",)))
    with pytest.raises(UsageError, match="full causal attention only"):
        apply_passes(p, ["kv-sink-cache:sinks=4,window=16"])


def test_cli_run_and_diff(capsys):
    import json

    from lcc.cli import main

    assert main(["run", "tiny-llama", "--prompt", "Hello there", "--max-new-tokens", "8",
                 "--pass", "kv-quant:bits=8"]) == 0
    assert main(["run", "tiny-llama", "--prompt", "Hello there", "--max-new-tokens", "60",
                 "--pass", "kv-sink-cache:sinks=4,window=32"]) == 0  # 71 tokens through 36 slots
    capsys.readouterr()
    for spec, exact in (("kv-quant:bits=8,residual=16", False), ("kv-sink-cache:sinks=4,window=32", False)):
        assert main(["diff", "tiny-llama", "--len", "48", "--pass", spec, "--json"]) == 0
        stage = json.loads(capsys.readouterr().out)["stages"][-1]
        assert stage["name"].startswith(spec.split(":")[0]) and stage["exact"] is exact and stage["ok"]
        assert 0 < stage["max_abs"] < 1.0
