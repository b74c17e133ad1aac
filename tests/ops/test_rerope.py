"""lcc.rerope_attention: RoPE + causal attention inside the window, and Su's per-pair formula everywhere."""

import math

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lcc.ops  # noqa: F401
from lcc.ops import registry
from lcc.ops.attention import attention_reference
from lcc.ops.rerope import rerope_chunked, rerope_reference
from lcc.ops.rope import rope_reference


def inv_freq_of(rotary_dim, base=10000.0):
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))


def make_qkv(b, hq, hkv, sq, sk, d, seed=0, dv=None):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, sq, d, generator=g), torch.randn(b, hkv, sk, d, generator=g),
            torch.randn(b, hkv, sk, dv or d, generator=g))


def rope_then_attention(q, k, v, inv_freq, scaling, kv_len, scale):
    """The oracle for an infinite window: lcc.rope at absolute positions, then lcc.attention's reference."""
    B, _, Sq, _ = q.shape
    Sk = k.shape[2]
    n = torch.full((B, 1), Sk) if kv_len is None else kv_len.reshape(-1, 1).expand(B, 1)
    q_pos = n - Sq + torch.arange(Sq)
    k_pos = torch.arange(Sk).expand(B, Sk)
    qr = torch.ops.lcc.rope(q, q_pos, inv_freq, scaling, "")
    kr = torch.ops.lcc.rope(k, k_pos, inv_freq, scaling, "")
    return attention_reference(qr, kr, v, kv_len, scale, "causal")


def per_pair(q, k, v, inv_freq, scaling, kv_len, scale, window, leaky):
    """Su's definition straight, in float64: score = q^T R(rel(i - j)) k, rel = r below w, w + (r - w) f above."""
    q, k, v, inv_freq = q.double(), k.double(), v.double(), inv_freq.double()
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    half = inv_freq.shape[0]
    k, v = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
    out = torch.zeros(B, Hq, Sq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        n = Sk if kv_len is None else int(kv_len.reshape(-1)[b if kv_len.numel() > 1 else 0])
        for i in range(Sq):
            p = n - Sq + i
            scores = torch.full((Hq, Sk), -math.inf, dtype=torch.float64)
            for j in range(min(p + 1, n)):
                r = p - j
                rel = r if r < window else window + (r - window) * leaky
                c, s = torch.cos(rel * inv_freq), torch.sin(rel * inv_freq)
                q1, q2, qp = q[b, :, i, :half], q[b, :, i, half:2 * half], q[b, :, i, 2 * half:]
                k1, k2, kp = k[b, :, j, :half], k[b, :, j, half:2 * half], k[b, :, j, 2 * half:]
                rotary = (c * (q1 * k1 + q2 * k2) + s * (q1 * k2 - q2 * k1)).sum(-1) * scaling**2
                scores[:, j] = (rotary + (qp * kp).sum(-1)) * scale
            if torch.isfinite(scores).any():
                out[b, :, i] = torch.einsum("hj,hjd->hd", torch.softmax(scores, -1), v[b])
    return out.float()


@pytest.mark.parametrize("sq,sk,kv_len", [(24, 24, None), (5, 30, torch.tensor([20, 30])), (1, 30, torch.tensor(17))])
@pytest.mark.parametrize("rotary_dim,scaling", [(16, 1.0), (8, 1.3)])
def test_window_covering_the_sequence_equals_rope_then_causal_attention(sq, sk, kv_len, rotary_dim, scaling):
    q, k, v = make_qkv(2, 4, 2, sq, sk, 16)
    inv_freq = inv_freq_of(rotary_dim)
    expected = rope_then_attention(q, k, v, inv_freq, scaling, kv_len, 0.3)
    for leaky in (0.0, 0.5):
        got = torch.ops.lcc.rerope_attention(q, k, v, None, inv_freq, scaling, kv_len, 0.3, sk, leaky, "causal")
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_leaky_factor_one_is_plain_rope_for_any_window():
    """rel(r) = w + (r - w) * 1 = r: Leaky ReRoPE with slope 1 never rectifies."""
    q, k, v = make_qkv(1, 2, 1, 20, 20, 16, seed=3)
    inv_freq = inv_freq_of(16)
    expected = rope_then_attention(q, k, v, inv_freq, 1.0, None, 0.25)
    for window in (0, 1, 5):
        got = rerope_reference(q, k, v, None, inv_freq, 1.0, None, 0.25, window, 1.0)
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=2e-6)


@settings(max_examples=12, deadline=None)
@given(window=st.integers(0, 12), leaky=st.sampled_from([0.0, 0.125, 0.5]), sq=st.integers(1, 14),
       extra=st.integers(0, 6), rotary_dim=st.sampled_from([8, 16]), scaling=st.sampled_from([1.0, 1.2]),
       group=st.sampled_from([1, 2]), seed=st.integers(0, 9))
def test_reference_matches_su_per_pair_formula(window, leaky, sq, extra, rotary_dim, scaling, group, seed):
    sk = sq + extra
    q, k, v = make_qkv(2, 2 * group, 2, sq, sk, 16, seed=seed)
    inv_freq = inv_freq_of(rotary_dim)
    kv_len = torch.tensor([sk - extra // 2, sk]) if extra else None
    got = torch.ops.lcc.rerope_attention(q, k, v, None, inv_freq, scaling, kv_len, 0.3, window, leaky, "causal")
    expected = per_pair(q, k, v, inv_freq, scaling, kv_len, 0.3, window, leaky)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_rerope_clamps_far_pairs_to_the_window_position():
    """ReRoPE: every key at distance >= w scores as if it sat exactly w before the query."""
    q, k, v = make_qkv(1, 1, 1, 1, 12, 8, seed=5)
    inv_freq, w = inv_freq_of(8), 3
    scores = []
    for j in range(12):  # one key at a time: attend a single key at position j, read its score via log-sum-exp
        qr = rope_reference(q, torch.tensor([[11]]), inv_freq)
        kr = rope_reference(k[:, :, j:j + 1], torch.tensor([[11 - min(11 - j, w)]]), inv_freq)
        scores.append(float((qr * kr).sum()))
    one_hot_v = torch.eye(12)[None, None]  # v = identity: the output row is the attention distribution itself
    probs = rerope_reference(q, k, one_hot_v, None, inv_freq, 1.0, None, 1.0, w, 0.0)[0, 0, 0]
    torch.testing.assert_close(probs, torch.softmax(torch.tensor(scores), 0), atol=1e-6, rtol=1e-5)


def test_explicit_positions_equal_the_aligned_default():
    q, k, v = make_qkv(2, 2, 1, 6, 16, 16, seed=7)
    kv_len = torch.tensor([10, 16])
    positions = kv_len[:, None] - 6 + torch.arange(6)
    a = rerope_reference(q, k, v, None, inv_freq_of(16), 1.0, kv_len, 0.25, 4, 0.0)
    b = rerope_reference(q, k, v, positions, inv_freq_of(16), 1.0, kv_len, 0.25, 4, 0.0)
    assert torch.equal(a, b)


@settings(max_examples=25, deadline=None)
@given(window=st.integers(0, 40), leaky=st.sampled_from([0.0, 1 / 16, 0.5]), sq=st.integers(1, 40),
       extra=st.integers(0, 30), chunk=st.integers(1, 17), group=st.sampled_from([1, 3]),
       mask=st.sampled_from(["causal", "sliding:window=9,sinks=0", "sliding:window=12,sinks=3"]),
       ragged=st.booleans(), explicit=st.booleans(), seed=st.integers(0, 99))
def test_chunked_cpu_path_equals_the_reference(window, leaky, sq, extra, chunk, group, mask, ragged, explicit, seed):
    """The CPU default skips keys per query chunk and scores each side of the window only where needed;
    the naive two-matrix reference is its oracle, across chunk boundaries on both sides of the window."""
    sk = sq + extra
    q, k, v = make_qkv(2, 2 * group, 2, sq, sk, 16, seed=seed, dv=8)
    kv_len = torch.tensor([max(sq, sk - extra // 2 - 1), sk]) if ragged else None
    n = kv_len.reshape(-1, 1) if ragged else torch.full((2, 1), sk)
    positions = n - sq + torch.arange(sq) if explicit else None
    args = (q, k, v, positions, inv_freq_of(12), 1.1, kv_len, 0.3, window, leaky, mask)
    got = rerope_chunked(*args, chunk=chunk)
    torch.testing.assert_close(got, rerope_reference(*args), atol=2e-6, rtol=2e-5)


def test_op_dispatches_to_the_chunked_path_and_keeps_the_reference_by_name():
    q, k, v = make_qkv(1, 3, 1, 50, 50, 16, seed=11)
    args = (q, k, v, None, inv_freq_of(16), 1.0, None, 0.25, 7, 0.0, "causal")
    torch.testing.assert_close(torch.ops.lcc.rerope_attention(*args), rerope_chunked(*args), atol=0, rtol=0)
    assert torch.equal(torch.ops.lcc.rerope_attention(*args, algo="reference"), rerope_reference(*args))


def test_op_is_declared_exports_and_costs_in_sympy():
    op = registry.get("rerope_attention")
    assert op.reference is rerope_reference and op.op is torch.ops.lcc.rerope_attention.default
    S = sympy.Symbol("S", positive=True)
    flops, moved, held = op.cost(1, 8, 2, S, S, 64, 64, 64, 512)
    assert all(isinstance(x, sympy.Expr) for x in (flops, moved, held))
    small, large = (float(flops.subs(S, n)) for n in (1024, 8192))
    assert 40 < large / small < 70  # quadratic in S (plus the linear window band)

    class M(torch.nn.Module):
        def forward(self, q, k, v, inv_freq):
            return torch.ops.lcc.rerope_attention(q, k, v, None, inv_freq, 1.0, None, 0.25, 4, 0.0, "causal")

    q, k, v = make_qkv(1, 2, 1, 10, 10, 16)
    seq = torch.export.Dim("seq", min=2, max=4096)
    ep = torch.export.export(M(), (q, k, v, inv_freq_of(16)),
                             dynamic_shapes=({2: seq}, {2: seq}, {2: seq}, None))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.lcc.rerope_attention.default in targets
    torch.testing.assert_close(ep.module()(q, k, v, inv_freq_of(16)), M()(q, k, v, inv_freq_of(16)))
