"""``lcc.attention``'s soft-cap (Gemma 2) against transformers' gemma2 ``eager_attention_forward``, and every
implementation of the op (pure torch, the Triton kernels in the interpreter) against the reference."""

import pytest
import torch

from lcc.ops.attention import attention_reference

B, HQ, HKV, D = 2, 4, 2, 16
CAP = 2.0


def _qkv(sq, sk, seed=0):
    g = torch.Generator().manual_seed(seed)
    # scores well past the cap (|q.k| * scale up to ~10), so capping changes the result
    q = 3 * torch.randn(B, HQ, sq, D, generator=g)
    return q, torch.randn(B, HKV, sk, D, generator=g), torch.randn(B, HKV, sk, D, generator=g)


def _hf_gemma2(q, k, v, scale, window=None):
    """transformers' gemma2 eager attention (the oracle) with its additive causal / sliding mask."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    module = torch.nn.Module()
    module.num_key_value_groups, module.head_dim, module.training = HQ // HKV, D, False
    sq, sk = q.shape[2], k.shape[2]
    i = torch.arange(sk - sq, sk)[:, None]
    j = torch.arange(sk)[None, :]
    allowed = (j <= i) & ((i - j < window) if window else True)
    mask = torch.zeros(sq, sk).masked_fill(~allowed, float("-inf"))[None, None]
    out, _ = eager_attention_forward(module, q, k, v, mask, scaling=scale, softcap=CAP)
    return out.transpose(1, 2)


@pytest.mark.parametrize("mask,window", [("causal", None), ("sliding:window=5,sinks=0", 5)])
def test_reference_soft_caps_as_transformers_gemma2(mask, window):
    q, k, v = _qkv(12, 12)
    want = _hf_gemma2(q, k, v, 0.2, window)
    torch.testing.assert_close(attention_reference(q, k, v, None, 0.2, mask, CAP), want, rtol=1e-5, atol=1e-5)
    uncapped = attention_reference(q, k, v, None, 0.2, mask)
    assert float((uncapped - want).abs().max()) > 1e-2  # the cap matters on these scores


@pytest.mark.parametrize("algo", ["auto", "reference", "flash", "chunked:chunk=4"])
@pytest.mark.parametrize("sq", [12, 1])  # prefill, and a decode step against a longer cache
def test_every_torch_implementation_soft_caps(algo, sq):
    q, k, v = _qkv(sq, 12, seed=1)
    kv_len = None if sq == 12 else torch.tensor(9)
    want = attention_reference(q, k, v, kv_len, 0.2, "causal", CAP)
    got = torch.ops.lcc.attention(q, k, v, kv_len, 0.2, "causal", algo, CAP)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["causal", "sliding:window=5,sinks=1"])
def test_triton_kernels_soft_cap(mask):
    """The flash kernel (prefill) and split-K flash decoding (one query), in Triton's interpreter on the CPU."""
    pytest.importorskip("triton")
    from lcc.backends.triton.attention import flash_attention
    from lcc.backends.triton.decode import flash_decode

    q, k, v = _qkv(12, 12, seed=2)
    want = attention_reference(q, k, v, None, 0.2, mask, CAP)
    torch.testing.assert_close(flash_attention(q, k, v, None, 0.2, mask, softcap=CAP), want, rtol=1e-4, atol=1e-4)
    q1, kv_len = q[:, :, :1], torch.tensor(10)
    want = attention_reference(q1, k, v, kv_len, 0.2, mask, CAP)
    torch.testing.assert_close(flash_decode(q1, k, v, kv_len, 0.2, mask, softcap=CAP), want, rtol=1e-4, atol=1e-4)
