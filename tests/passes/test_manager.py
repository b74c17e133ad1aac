"""The pass registry, --pass parsing, non-mutation, and the attention-mask passes against the op oracle."""

import pytest
import torch

from lcc.capture.export import capture
from lcc.errors import UsageError
from lcc.ops.masks import dense_mask
from lcc.passes import REGISTRY, apply_passes, canonicalize, parse_pass
from lcc.passes.graph import ATTENTION, get_arg, layer_of, lcc_nodes


@pytest.fixture(scope="module")
def program():
    from lcc.models import load_model

    return canonicalize(capture(load_model("tiny-qwen2"), capacity=64, entries=("prefill", "prefill_full")))


def test_parse_fills_defaults_and_keeps_list_values():
    spec = parse_pass("sliding-window:window=8k,layers=0-5,12")
    assert spec.kwargs == {"window": 8192, "sinks": 4, "layers": "0-5,12"}
    assert str(parse_pass("flash")) == "flash:layers=all"


@pytest.mark.parametrize("text,message", [
    ("nope", "unknown pass 'nope'; passes:"),
    ("flash:x=1", "unknown parameter 'x=1'; parameters: layers=all"),
    ("sliding-window:window=abc", "not a valid int"),
    ("sliding-window:window", "unknown parameter"),
])
def test_bad_pass_strings_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_pass(text)


def test_every_pass_has_doc_and_typed_defaults():
    for d in REGISTRY.values():
        assert d.doc and all(isinstance(p.default, p.type) for p in d.params)


def test_a_pass_never_mutates_its_input(program):
    before = {k: str(gm.graph) for k, gm in program.entries.items()}
    after = apply_passes(program, ["sliding-window:window=8,sinks=2", "flash"])
    assert {k: str(gm.graph) for k, gm in program.entries.items()} == before
    assert after.passes == ("sliding-window:window=8,sinks=2,layers=all", "flash:layers=all")
    masks = {get_arg(n, "mask") for n in lcc_nodes(after.entries["prefill"], ATTENTION)}
    assert masks == {"sliding:window=8,sinks=2"}


def test_layers_parameter_selects_layers(program):
    after = apply_passes(program, ["sliding-window:window=4,sinks=0,layers=0"])
    masks = {layer_of(n): get_arg(n, "mask") for n in lcc_nodes(after.entries["prefill"], ATTENTION)}
    # layer 0 was full attention and is now local; layers 1-2 keep the model's own window of 24
    assert masks == {0: "sliding:window=4,sinks=0", 1: "sliding:window=24,sinks=0", 2: "sliding:window=24,sinks=0"}


def test_out_of_range_layers_are_usage_errors(program):
    with pytest.raises(UsageError, match="out of range"):
        apply_passes(program, ["flash:layers=0-7"])


def test_sliding_window_attention_equals_masked_sdpa_inside_the_program(program):
    """The rewritten layer computes softmax attention under exactly the predicate's mask."""
    after = apply_passes(program, ["sliding-window:window=5,sinks=2"])
    gm = after.entries["prefill_full"]
    node = lcc_nodes(gm, ATTENTION)[0]
    seen = {}
    orig = torch.ops.lcc.attention

    def spy(q, k, v, kv_len, scale, mask, algo, softcap=0.0):
        seen.setdefault("args", (q, k, v, scale, mask))
        return orig(q, k, v, kv_len, scale, mask, algo, softcap)

    node.target = spy
    gm.recompile()
    try:
        out = gm(torch.randint(0, 256, (1, 30)), *after.cache.empty())
    finally:
        node.target = ATTENTION
        gm.recompile()
    assert out[0].shape[1] == 30
    q, k, v, scale, mask = seen["args"]
    m = dense_mask(mask, 30, 30)
    expected_rows = [[j for j in range(30) if j <= i and (i - j < 5 or j < 2)] for i in range(30)]
    assert [torch.nonzero(m[i]).flatten().tolist() for i in range(30)] == expected_rows
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           attn_mask=m, scale=scale)
    torch.testing.assert_close(orig(q, k, v, None, scale, mask, "reference"), ref, atol=1e-5, rtol=1e-5)


def test_exact_passes_and_wide_windows_keep_logits(program):
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    base = program.entries["prefill_full"](ids, *program.cache.empty())[0]
    for passes in (["flash"], ["attention-chunked:chunk=7"], ["sliding-window:window=64,sinks=0"]):
        out = apply_passes(program, passes).entries["prefill_full"](ids, *program.cache.empty())[0]
        assert float((out - base).abs().max()) <= 1e-5, passes
    narrow = apply_passes(program, ["sliding-window:window=4,sinks=0"]).entries["prefill_full"]
    assert float((narrow(ids, *program.cache.empty())[0] - base).abs().max()) > 1e-3
