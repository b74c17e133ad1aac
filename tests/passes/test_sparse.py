"""``block-sparse``: each pattern inside the program against HF with that mask written out by hand,
and decode (one query against the cache) agreeing with prefill under the same predicate."""

import contextlib

import pytest
import torch

from lcc.capture.export import capture
from lcc.errors import UsageError
from lcc.passes import apply_passes, canonicalize, parse_pass
from lcc.passes.graph import ATTENTION, get_arg, layer_of, lcc_nodes
from tests.ops.test_sparse_masks import by_hand

# small parameters, so 40 tokens cross many blocks, strides, segments and windows
PATTERNS = {
    "block-local": "block=4,blocks=2",
    "strided": "block=2,stride=3",
    "fixed": "block=2,stride=3,c=1",
    "dilated": "segment=8,rate=2,levels=2,growth=2",
    "global-local": "globals=2,window=6,every=7",
}
PASSES = [f"block-sparse:pattern={p},{a}" for p, a in PATTERNS.items()]


@pytest.fixture(scope="module")
def llama(tiny):
    return tiny("llama")


@pytest.fixture(scope="module")
def program(llama):
    return canonicalize(capture(llama, capacity=64, entries=("prefill", "decode", "prefill_full")))


@contextlib.contextmanager
def hf_attention(model, fn):
    """HF's forward with every layer's attention replaced by ``fn`` (transformers' AttentionInterface)."""
    from transformers import AttentionInterface

    AttentionInterface.register("lcc-test", fn)
    saved = model.config._attn_implementation
    model.config._attn_implementation = "lcc-test"
    try:
        yield model
    finally:
        model.config._attn_implementation = saved


def masked_softmax_attention(allowed):
    """Dense softmax attention under an explicit [S, S] boolean mask, GQA by repeating K/V; a query that
    sees no key at all (dilated, rate > 1) attends to nothing and outputs zeros, as lcc.attention defines."""

    def fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        g = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
        scores = (query @ k.transpose(-1, -2)) * scaling
        scores = scores.masked_fill(~allowed[: query.shape[2], : key.shape[2]], float("-inf"))
        probs = torch.softmax(scores, -1).nan_to_num(0.0)
        return (probs @ v).transpose(1, 2).contiguous(), None

    return fn


@pytest.mark.parametrize("text", PASSES, ids=list(PATTERNS))
def test_pattern_equals_hf_with_the_papers_mask(text, llama, program):
    spec = parse_pass(text)
    kind = spec.kwargs["pattern"]
    args = {k: spec.kwargs[k] for k in ("block", "blocks", "stride", "c", "segment", "rate", "levels", "growth",
                                        "globals", "window", "every")}
    n = 40
    allowed = torch.tensor([[by_hand(kind, args, i, j) for j in range(n)] for i in range(n)])
    assert not bool(allowed.all() or torch.equal(allowed, torch.ones(n, n, dtype=torch.bool).tril()))  # truly sparse
    ids = torch.randint(0, llama.spec.vocab, (1, n), generator=torch.Generator().manual_seed(1))
    out = apply_passes(program, [spec])
    masks = {get_arg(node, "mask") for gm in out.entries.values() for node in lcc_nodes(gm, ATTENTION)}
    assert len(masks) == 1 and masks.pop().startswith(kind + ":")
    got = out.entries["prefill_full"](ids, *out.cache.empty())[0]
    with torch.inference_mode(), hf_attention(llama.model, masked_softmax_attention(allowed)) as model:
        want = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    dense = program.entries["prefill_full"](ids, *program.cache.empty())[0]
    assert float((got - dense).abs().max()) > 1e-3  # the pattern did change the function


@pytest.mark.parametrize("text", PASSES, ids=list(PATTERNS))
def test_decode_agrees_with_prefill_at_every_position(text, program):
    """Decode (one query at kv_len - 1 against the cache) applies the same predicate as prefill."""
    from lcc.runtime import generate_ids

    out = apply_passes(program, [text])
    prompt = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(2))
    new = generate_ids(out, prompt, 16)
    full = torch.cat([prompt, torch.tensor([new[:-1]])], 1)
    logits = out.entries["prefill_full"](full, *out.cache.empty())[0][0]
    assert logits[prompt.shape[1] - 1:].argmax(-1).tolist() == new
    # and the decode logits themselves: step by step against the prefill row of the same position
    prefill, decode = out.entries["prefill"], out.entries["decode"]
    step_logits, *cache = prefill(prompt, *out.cache.empty())
    for i, token in enumerate(new[:-1]):
        step_logits, *cache = decode(torch.tensor([[token]]), torch.tensor(prompt.shape[1] + i), *cache)
        torch.testing.assert_close(step_logits[0, 0], logits[prompt.shape[1] + i], atol=1e-4, rtol=1e-4)


def test_exact_only_when_the_pattern_covers_the_causal_mask():
    assert parse_pass("block-sparse:pattern=block-local,block=64,blocks=2").exact_for(64)
    assert not parse_pass("block-sparse:pattern=block-local,block=64,blocks=2").exact_for(65 + 64)
    assert parse_pass("block-sparse:pattern=global-local,window=300").exact_for(300)
    assert not parse_pass("block-sparse:pattern=global-local,window=300,globals=0").exact_for(301)
    assert not parse_pass("block-sparse:pattern=dilated,segment=4,rate=2").exact_for(16)
    assert parse_pass("block-sparse:pattern=strided,stride=4,block=1").exact_for(4)
    assert not parse_pass("block-sparse:pattern=strided,stride=4,block=1").exact_for(6)


def test_only_causal_layers_are_rewritten(tiny):
    """Layers that already attend locally (the model's own sliding window) keep their window."""
    program = canonicalize(capture(tiny("qwen2"), capacity=64, entries=("prefill",)))
    before = {layer_of(n): get_arg(n, "mask") for n in lcc_nodes(program.entries["prefill"], ATTENTION)}
    after = apply_passes(program, ["block-sparse:pattern=strided,block=4,stride=2"])
    masks = {layer_of(n): get_arg(n, "mask") for n in lcc_nodes(after.entries["prefill"], ATTENTION)}
    assert before[0] == "causal" and masks[0] == "strided:block=4,stride=2"
    assert all(masks[i] == before[i] != "causal" for i in (1, 2))


@pytest.mark.parametrize("text,message", [
    ("block-sparse:pattern=banded", "is not one of block-local"),
    ("block-sparse:pattern=dilated,segment=6,rate=4", "segment must be a multiple of rate"),
    ("block-sparse:pattern=block-local,blocks=0", "blocks=0 is out of range"),
])
def test_bad_patterns_are_usage_errors(text, message, program):
    with pytest.raises(UsageError, match=message):
        apply_passes(program, [text])
