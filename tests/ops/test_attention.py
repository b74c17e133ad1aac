"""lcc.attention's reference and chunked implementations against torch SDPA with a mask built here."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lcc.ops  # noqa: F401


def sdpa_oracle(q, k, v, kv_len, scale, window=None, sinks=0):
    """torch's SDPA on repeated K/V with a boolean mask written out by hand."""
    B, Hq, Sq, D = q.shape
    Sk = k.shape[2]
    g = Hq // k.shape[1]
    kr, vr = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    n = Sk if kv_len is None else int(kv_len)
    mask = torch.zeros(Sq, Sk, dtype=torch.bool)
    for i in range(Sq):
        qp = n - Sq + i
        for j in range(n):
            if j <= qp and (window is None or qp - j < window or j < sinks):
                mask[i, j] = True
    return F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, scale=scale)


@settings(max_examples=25, deadline=None)
@given(sq=st.integers(1, 12), extra=st.integers(0, 10), hkv=st.sampled_from([1, 2]), g=st.sampled_from([1, 3, 4]),
       window=st.one_of(st.none(), st.integers(1, 30)), sinks=st.integers(0, 3), pad=st.integers(0, 5),
       seed=st.integers(0, 1000))
def test_attention_matches_sdpa_with_explicit_mask(sq, extra, hkv, g, window, sinks, pad, seed):
    torch.manual_seed(seed)
    sk_valid = sq + extra
    q = torch.randn(1, hkv * g, sq, 8)
    k = torch.randn(1, hkv, sk_valid + pad, 8)
    v = torch.randn(1, hkv, sk_valid + pad, 8)
    kv_len = torch.tensor(sk_valid) if pad else None
    mask = "causal" if window is None else f"sliding:window={window},sinks={sinks}"
    expected = sdpa_oracle(q, k, v, sk_valid if pad else None, 0.3, window, sinks if window else 0)
    for algo in ("reference", "auto", "flash", "chunked:chunk=3"):
        got = torch.ops.lcc.attention(q, k, v, kv_len, 0.3, mask, algo)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_decode_query_sits_at_the_last_valid_key():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 4)
    got = torch.ops.lcc.attention(q, k, v, torch.tensor(6), 0.5, "causal", "auto")
    expected = F.scaled_dot_product_attention(q, k[:, :, :6], v[:, :, :6], scale=0.5)
    torch.testing.assert_close(got, expected)


def test_attention_exports_with_symbolic_length():
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.lcc.attention(q, k, v, None, 0.5, "sliding:window=4,sinks=1", "auto")

    s = torch.export.Dim("s", min=2, max=64)
    x = torch.randn(1, 2, 8, 4)
    ep = torch.export.export(M(), (x, x, x), dynamic_shapes=({2: s}, {2: s}, {2: s}))
    y = torch.randn(1, 2, 20, 4)
    torch.testing.assert_close(ep.module()(y, y, y), M()(y, y, y))
