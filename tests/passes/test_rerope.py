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
