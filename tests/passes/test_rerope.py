"""rerope / leaky-rerope passes: exact where they must be, consistent between prefill and decode."""

import pytest
import torch

from lcc.capture import capture
from lcc.errors import UsageError
from lcc.ops.rerope import rerope_reference
from lcc.passes import apply_passes, canonicalize
from lcc.passes.graph import ROPE, lcc_nodes
from lcc.passes.rerope import RERoPE


@pytest.fixture(scope="module")
def program():
    from lcc.models import load_model

    return canonicalize(capture(load_model("tiny-qwen2"), 128, entries=("prefill_full", "prefill", "decode")))


IDS = torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(0))


def logits(program, ids=IDS):
    return program.entries["prefill_full"](ids, *program.cache.empty())[0]


@pytest.mark.parametrize("passes", [["rerope:window=128"], ["leaky-rerope:window=16,factor=1"]])
def test_exact_cases_equal_plain_rope(program, passes):
    """A window covering the length, or a leak of slope 1, is RoPE itself."""
    assert float((logits(apply_passes(program, passes)) - logits(program)).abs().max()) <= 1e-5


def test_rerope_replaces_rope_and_attention(program):
    after = apply_passes(program, ["rerope:window=16"])
    gm = after.entries["prefill_full"]
    assert lcc_nodes(gm, ROPE) == [] and len(lcc_nodes(gm, RERoPE)) == program.spec.layers
    assert float((logits(after) - logits(program)).abs().max()) > 1e-3  # a narrow window changes the model


@pytest.mark.parametrize("passes", [["rerope:window=16"], ["leaky-rerope:window=16,factor=8"]])
def test_decode_continues_prefill(program, passes):
    """The cache holds un-rotated keys: decoding the last token equals prefilling it."""
    after = apply_passes(program, passes)
    full = logits(after)[0, -1]
    out = after.entries["prefill"](IDS[:, :99], *after.cache.empty())
    step = after.entries["decode"](IDS[:, 99:], torch.tensor(99), *out[1:])[0][0, -1]
    assert float((step - full).abs().max()) <= 1e-4


def test_clamped_relative_position_against_per_pair_formula():
    """Outside the window every key is scored as if at relative position w (ReRoPE)."""
    torch.manual_seed(0)
    D, S, w = 8, 12, 3
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    q, k, v = torch.randn(1, 1, S, D), torch.randn(1, 1, S, D), torch.randn(1, 1, S, D)
    out = rerope_reference(q, k, v, None, inv_freq, 1.0, None, 0.5, w, 0.0, "causal")

    def rot(x, p):
        ang = p * inv_freq
        c, s = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
        return x * c + torch.cat([-x[D // 2:], x[:D // 2]]) * s

    for i in range(S):
        scores = torch.tensor([float(rot(q[0, 0, i], float(min(i - j, w))) @ k[0, 0, j]) * 0.5 for j in range(i + 1)])
        want = torch.softmax(scores, 0) @ v[0, 0, :i + 1]
        torch.testing.assert_close(out[0, 0, i], want, atol=1e-5, rtol=1e-5)


def test_bad_parameters(program):
    with pytest.raises(UsageError):
        apply_passes(program, ["rerope:window=0"])
    with pytest.raises(UsageError):
        apply_passes(program, ["leaky-rerope:window=16,factor=0.5"])
    with pytest.raises(UsageError, match="plain rope"):
        apply_passes(program, ["rope-scaling:method=dynamic-ntk,factor=2", "rerope:window=16"])


# --- self-extend and dca: the same op, other position maps ---


@pytest.mark.parametrize("passes", [["self-extend:group=4,window=100"], ["self-extend:group=1,window=8"],
                                    ["dca:chunk=120,local=16"]])
def test_new_kinds_exact_where_they_must_be(program, passes):
    """W covering the 100 tokens (or G = 1), and one DCA chunk of 104 positions, are RoPE itself."""
    after = apply_passes(program, passes)
    assert lcc_nodes(after.entries["prefill_full"], ROPE) == []
    assert float((logits(after) - logits(program)).abs().max()) <= 1e-5


@pytest.mark.parametrize("passes", [["self-extend:group=4,window=16"], ["dca:chunk=48,local=8"], ["self-extend"],
                                    ["dca"]])
def test_new_kinds_decode_continues_prefill(program, passes):
    """Un-rotated keys in the cache: a decode step at position 99 equals prefill's last row."""
    after = apply_passes(program, passes)
    full = logits(after)[0, -1]
    if passes[0] in ("self-extend:group=4,window=16", "dca:chunk=48,local=8"):
        assert float((full - logits(program)[0, -1]).abs().max()) > 1e-3  # these do change the model
    out = after.entries["prefill"](IDS[:, :99], *after.cache.empty())
    step = after.entries["decode"](IDS[:, 99:], torch.tensor(99), *out[1:])[0][0, -1]
    assert float((step - full).abs().max()) <= 1e-4


def test_defaults_follow_the_papers_relative_to_the_trained_length(program):
    """T = 256, capacity 128: W = 64, G = 1 (reach 256 covers 128); DCA chunk 192, local 16 (ChunkLlama's)."""
    from lcc.passes.rerope import dca_defaults, self_extend_defaults

    assert self_extend_defaults(8192, 131072) == (32, 2048)  # (8192 - 2048) 16 + 2048 = 100352 < 131072
    assert self_extend_defaults(8192, 65536) == (16, 2048)  # (8192 - 2048) 8 + 2048 = 51200 < 65536
    assert self_extend_defaults(8192, 8192) == (1, 2048)
    assert dca_defaults(8192) == (6144, 512) and dca_defaults(4096) == (3072, 256)  # replace_with_chunkllama(4096)
    node = lcc_nodes(apply_passes(program, ["dca"]).entries["prefill_full"], RERoPE)[0]
    assert (node.args[8], node.args[-1], node.args[-3]) == (16, 192, "dca")
    node = lcc_nodes(apply_passes(program, ["self-extend"]).entries["prefill_full"], RERoPE)[0]
    assert (node.args[8], node.args[-2], node.args[-3]) == (64, 1, "self-extend")


def test_planner_proposes_them_past_the_trained_length():
    from lcc.passes.base import REGISTRY

    assert REGISTRY["self-extend"].plan(32768, 8192) == ["group=8,window=2048"]  # 6144 * 4 + 2048 < 32768
    assert REGISTRY["dca"].plan(32768, 8192) == ["chunk=6144,local=512"]
    assert REGISTRY["self-extend"].plan(8192, 8192) == [] and REGISTRY["dca"].plan(4096, 8192) == []


@pytest.mark.parametrize("spec,match", [("self-extend:group=0", "group"), ("self-extend:window=0", "window"),
                                        ("self-extend:window=256", "below the trained length"),
                                        ("dca:chunk=256", "below the trained length"), ("dca:chunk=1", "chunk"),
                                        ("dca:chunk=64,local=64", "below the chunk size"), ("dca:local=-2", "local"),
                                        ("self-extend:group=two", "group")])
def test_new_kinds_bad_parameters(program, spec, match):
    with pytest.raises(UsageError, match=match) as e:
        apply_passes(program, [spec])
    assert "\n" not in str(e.value)


def _diff_stage(loaded, spec, length):
    from lcc.diff import diff

    reports = diff(loaded, [spec], length=length)
    assert reports[-1].name.startswith(spec.split(":")[0])
    return reports[-1]


@pytest.mark.parametrize("spec", ["self-extend:group=4,window=128", "dca:chunk=200,local=8"])
def test_lcc_diff_shows_the_new_passes_exact_when_their_window_covers_the_length(spec):
    """tiny-llama (trained 256) at 128 tokens: W = 128 covers it, DCA's first chunk (192 positions) holds it."""
    from lcc.models import load_model

    stage = _diff_stage(load_model("tiny-llama"), spec, 128)
    assert stage.exact and stage.ok and stage.vs_prev_max_abs <= stage.limit


def test_lcc_diff_reports_a_narrow_self_extend_as_approximate():
    from lcc.models import load_model

    stage = _diff_stage(load_model("tiny-llama"), "self-extend:group=4,window=16", 128)
    assert not stage.exact and stage.ok and stage.vs_prev_max_abs > 1e-3


@pytest.mark.slow
def test_lcc_diff_new_passes_exact_on_smollm2(smollm2):
    """smollm2-135m (trained 8192) at 256 tokens: W = 256 and the paper-default DCA chunk (5632 positions) cover it."""
    for spec in ("self-extend:group=8,window=256", "dca:chunk=6144,local=512"):
        stage = _diff_stage(smollm2, spec, 256)
        assert stage.exact and stage.ok and stage.vs_prev_max_abs <= stage.limit, stage


def test_auto_self_extend_and_dca_are_exact_where_their_paper_defaults_cover_the_length():
    """With the trained length T known, ``auto`` resolves as the passes do: Self-Extend's G is 1 (nothing grouped)
    while (T - W) G + W covers the length, i.e. up to T; DCA's chunk 3T/4 less its local window T/16 must hold the
    whole length.  Without T neither can say."""
    from lcc.passes import parse_pass

    self_extend, dca = parse_pass("self-extend"), parse_pass("dca")
    assert self_extend.exact_for(8192, 8192) and not self_extend.exact_for(8193, 8192)
    assert dca.exact_for(6144 - 512, 8192) and not dca.exact_for(6144, 8192)
    assert not self_extend.exact_for(2048) and not dca.exact_for(2048)
