"""memory-tokens (RMT) on tiny-llama: the segment loop against one written here on the HF module.

Oracle: HF eager's base model run on ``inputs_embeds = [read, embed(segment), write]`` per
segment, positions from 0, the next ``read`` being its ``last_hidden_state`` at the write places
(RMT's decoder recurrence) after rescaling each vector to the token embeddings' RMS, written
independently of ``lcc.passes.memory_tokens``.
"""

import pytest
import torch

from lcc.capture.export import capture
from lcc.diff import hf_eager
from lcc.errors import UsageError
from lcc.passes import apply_passes, canonicalize
from lcc.passes.memory_tokens import NOISE, init_memory, load_memory, save_memory

M, S = 4, 16


@pytest.fixture(scope="module")
def tiny_llama():
    from lcc.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def program(tiny_llama):
    return canonicalize(capture(tiny_llama, capacity=64, entries=("prefill", "decode", "prefill_full",
                                                                    "prefill_logits")))


def ids(n, seed=0):
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def hf_segment_loop(model, memory, tokens, segment):
    """Logits [n, V] of RMT over ``tokens``: a plain loop over segments on HF eager."""
    m = memory.shape[0]
    with hf_eager(model):
        read, out = memory[None], []
        starts = list(range(0, tokens.shape[1], segment))
        for i, a in enumerate(starts):
            seg = tokens[:, a:a + segment]
            parts = [read, model.model.embed_tokens(seg)] + ([memory[None]] if i < len(starts) - 1 else [])
            x = torch.cat(parts, 1)
            h = model.model(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]).last_hidden_state
            out.append(model.lm_head(h[0, m:m + seg.shape[1]]))
            w = h[:, x.shape[1] - m:]
            emb_rms = model.model.embed_tokens.weight.pow(2).mean().sqrt()
            read = w / w.pow(2).mean(-1, keepdim=True).sqrt() * emb_rms
    return torch.cat(out)


@pytest.fixture(scope="module")
def memory_file(tmp_path_factory, tiny_llama):
    mem = torch.randn(M, tiny_llama.spec.hidden, generator=torch.Generator().manual_seed(3)) * 0.5
    path = tmp_path_factory.mktemp("mem") / "mem.safetensors"
    save_memory(path, mem, {"count": M})
    return path, mem


@pytest.mark.parametrize("n", [16, 41, 64])
def test_segment_loop_equals_a_plain_hf_loop(tiny_llama, program, memory_file, n):
    path, mem = memory_file
    q = apply_passes(program, [f"memory-tokens:count={M},segment={S},memory={path}"])
    x = ids(n)
    want = hf_segment_loop(tiny_llama.model, mem, x, S)
    with torch.inference_mode():
        got = q.entries["prefill_logits"](x, *q.cache.empty())[0][0]
        full = q.entries["prefill_full"](x, *q.cache.empty())[0][0]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full, want, atol=1e-5, rtol=1e-4)


def test_memory_changes_later_segments_only(tiny_llama, program, memory_file):
    path, mem = memory_file
    a = apply_passes(program, [f"memory-tokens:count={M},segment={S},memory={path}"])
    b = apply_passes(program, [f"memory-tokens:count={M},segment={S}"])  # other memory
    x = ids(40)
    with torch.inference_mode():
        la = a.entries["prefill_logits"](x, *a.cache.empty())[0][0]
        lb = b.entries["prefill_logits"](x, *b.cache.empty())[0][0]
    assert (la - lb).abs().max() > 1e-3  # the memory is read


@pytest.mark.parametrize("prompt", [5, 16, 20])
def test_decoding_across_segment_boundaries_equals_the_segment_loop(tiny_llama, program, memory_file, prompt):
    path, mem = memory_file
    q = apply_passes(program, [f"memory-tokens:count={M},segment={S},memory={path}"])
    x = ids(50, seed=1)
    want = hf_segment_loop(tiny_llama.model, mem, x, S)
    with torch.inference_mode():
        logits, *cache = q.entries["prefill"](x[:, :prompt], *q.cache.empty())
        got = [logits[0, -1]]
        for t in range(prompt, 49):  # crosses the boundaries at 16, 32 and 48
            logits, *cache = q.entries["decode"](x[:, t:t + 1], torch.tensor(t), *cache)
            got.append(logits[0, -1])
    torch.testing.assert_close(torch.stack(got), want[prompt - 1:49], atol=1e-5, rtol=1e-4)


def test_fresh_memory_is_the_mean_embedding_plus_small_seeded_noise(tiny_llama):
    w = tiny_llama.model.model.embed_tokens.weight.detach()
    a, b, c = init_memory(w, 8, seed=0), init_memory(w, 8, seed=0), init_memory(w, 8, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = (a - w.mean(0)) / (NOISE * w.std(0))
    assert abs(float(z.mean())) < 0.3 and 0.7 < float(z.std()) < 1.3  # standard normal noise


def test_the_memory_is_kept_in_the_program(program, memory_file):
    path, mem = memory_file
    q = apply_passes(program, [f"memory-tokens:count={M},segment={S},memory={path}"])
    assert torch.equal(q.meta["memory_tokens"]["embeddings"], mem)
    assert torch.equal(q.entries["decode"].seg.memory, mem)
    assert torch.equal(load_memory(str(path))[0], mem)


def test_segments_shrink_to_the_capture_and_bad_arguments_fail(program, memory_file):
    q = apply_passes(program, [f"memory-tokens:count={M},segment=512"])
    assert q.meta["memory_tokens"]["segment"] == 64 - 2 * M
    with pytest.raises(UsageError, match="no room"):
        apply_passes(program, ["memory-tokens:count=32,segment=16"])
    with pytest.raises(UsageError, match="shape"):
        apply_passes(program, [f"memory-tokens:count=5,segment=16,memory={memory_file[0]}"])
    with pytest.raises(UsageError, match="does not exist"):
        apply_passes(program, ["memory-tokens:count=4,segment=16,memory=/nonexistent.safetensors"])
