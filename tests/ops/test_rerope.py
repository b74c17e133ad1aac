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


# --- the other mapping kinds: Self-Extend (Jin et al. 2024) and Dual Chunk Attention (An et al. 2024) ---


def self_extend_longlm(q, k, v, inv_freq, scale, group, window):
    """datamllab/LongLM ``self_extend_forward``'s prefill, transliterated (one sequence, q_len == kv_len, MHA):
    neighbour and grouped score matrices, the grouped one where neighbor_attention_mask drops to 0."""
    S = q.shape[2]
    pos = torch.arange(S)[None]
    shift = 0 if pos.max() < window else window
    group_q = pos // group + shift - shift // group
    group_k = pos // group
    neighbor = rope_reference(q, pos, inv_freq) @ rope_reference(k, pos, inv_freq).transpose(-1, -2) * scale
    grouped = rope_reference(q, group_q, inv_freq) @ rope_reference(k, group_k, inv_freq).transpose(-1, -2) * scale
    neighbor_mask = torch.tril(torch.ones(S, S))
    if S - window > 0:
        neighbor_mask[window:, :S - window] -= torch.tril(torch.ones(S - window, S - window))
    merged = torch.where(neighbor_mask.bool(), neighbor, grouped)
    merged = merged.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(merged, -1) @ v


def dca_chunkllama(q, k, v, inv_freq, scale, chunk_size, local_window):
    """HKUNLP/ChunkLlama ``chunkllama_attn_replace.py``'s decode branch, transliterated, run for every query
    position i as a decode step over keys 0..i (so it covers causal prefill too; one sequence, MHA)."""
    chunk_len = chunk_size - local_window
    S = q.shape[2]
    q_t = torch.arange(chunk_len).float()
    qc_t = (q_t + chunk_len).clamp(max=chunk_size)  # the successive / inter-chunk query positions
    k_t = torch.arange(S) % chunk_len
    keys = rope_reference(k, k_t[None], inv_freq)
    rows = []
    for i in range(S):
        kv_seq_len = i + 1
        p = torch.tensor([[i % chunk_len]])
        chunk_num_curr = (kv_seq_len - 1) // chunk_len
        qi = q[:, :, i:i + 1]
        scores = [rope_reference(qi, q_t[p], inv_freq) @ keys[:, :, chunk_len * chunk_num_curr:kv_seq_len].mT]
        if chunk_num_curr >= 1:
            scores.insert(0, rope_reference(qi, qc_t[p], inv_freq)
                          @ keys[:, :, chunk_len * (chunk_num_curr - 1):chunk_len * chunk_num_curr].mT)
        if chunk_num_curr >= 2:
            scores.insert(0, rope_reference(qi, qc_t[torch.tensor([[chunk_len - 1]])], inv_freq)
                          @ keys[:, :, :chunk_len * (chunk_num_curr - 1)].mT)
        probs = torch.softmax(torch.cat(scores, -1) * scale, -1)
        rows.append(probs @ v[:, :, :kv_seq_len])
    return torch.cat(rows, 2)


@settings(max_examples=15, deadline=None)
@given(s=st.integers(1, 40), window=st.integers(0, 20), group=st.integers(1, 5), rotary_dim=st.sampled_from([8, 16]),
       seed=st.integers(0, 9))
def test_self_extend_reference_matches_longlm(s, window, group, rotary_dim, seed):
    q, k, v = make_qkv(1, 2, 2, s, s, 16, seed=seed)
    inv_freq = inv_freq_of(rotary_dim)
    got = rerope_reference(q, k, v, None, inv_freq, 1.0, None, 0.3, window, 0.0, "causal", "self-extend", group)
    torch.testing.assert_close(got, self_extend_longlm(q, k, v, inv_freq, 0.3, group, window), atol=2e-5, rtol=2e-5)


@settings(max_examples=15, deadline=None)
@given(s=st.integers(1, 48), chunk_size=st.integers(2, 16), local=st.integers(0, 15),
       rotary_dim=st.sampled_from([8, 16]),
       seed=st.integers(0, 9))
def test_dca_reference_matches_chunkllama(s, chunk_size, local, rotary_dim, seed):
    local = local % chunk_size
    q, k, v = make_qkv(1, 2, 2, s, s, 16, seed=seed)
    inv_freq = inv_freq_of(rotary_dim)
    got = rerope_reference(q, k, v, None, inv_freq, 1.0, None, 0.3, local, 0.0, "causal", "dca", 1, chunk_size)
    torch.testing.assert_close(got, dca_chunkllama(q, k, v, inv_freq, 0.3, chunk_size, local), atol=2e-5, rtol=2e-5)


KINDS = [("self-extend", 4, 2, 0), ("self-extend", 7, 3, 0), ("self-extend", 0, 2, 0), ("dca", 3, 1, 10),
         ("dca", 0, 1, 6), ("dca", 5, 1, 9)]  # (kind, window, group, chunk_size)


@pytest.mark.parametrize("kind,window,group,chunk_size", KINDS)
@pytest.mark.parametrize("sq,extra,chunk,mask,ragged", [(40, 0, 7, "causal", False), (13, 20, 4, "causal", True),
                                                       (30, 5, 16, "sliding:window=12,sinks=3", True),
                                                       (1, 33, 1, "causal", True)])
def test_chunked_cpu_path_equals_the_reference_for_every_kind(kind, window, group, chunk_size, sq, extra, chunk, mask,
                                                                ragged):
    """Each branch scored only over its key span, across chunk boundaries of queries, keys and DCA's chunks;
    the last case is decode (one query against the cache)."""
    sk = sq + extra
    q, k, v = make_qkv(2, 4, 2, sq, sk, 16, seed=sk, dv=8)
    kv_len = torch.tensor([max(sq, sk - extra // 2 - 1), sk]) if ragged else None
    args = (q, k, v, None, inv_freq_of(12), 1.1, kv_len, 0.3, window, 0.0, mask, kind, group, chunk_size)
    torch.testing.assert_close(rerope_chunked(*args, chunk=chunk), rerope_reference(*args), atol=2e-6, rtol=2e-5)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["self-extend", "dca"]), window=st.integers(0, 12), group=st.integers(1, 4),
       chunk_size=st.integers(1, 20), sq=st.integers(1, 40), extra=st.integers(0, 20), chunk=st.integers(1, 17),
       seed=st.integers(0, 99))
def test_chunked_cpu_path_equals_the_reference_for_random_maps(kind, window, group, chunk_size, sq, extra, chunk, seed):
    if kind == "dca":
        window, chunk_size = window % (chunk_size + 1), chunk_size + 1  # 0 <= local < chunk size
    sk = sq + extra
    q, k, v = make_qkv(1, 2, 1, sq, sk, 16, seed=seed)
    args = (q, k, v, None, inv_freq_of(16), 1.0, None, 0.3, window, 0.0, "causal", kind, group, chunk_size)
    torch.testing.assert_close(rerope_chunked(*args, chunk=chunk), rerope_reference(*args), atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("kind,window,leaky,group,chunk_size,sq,kv_len", [
    ("rerope", 100, 0.0, 1, 0, 600, None), ("rerope", 300, 0.0625, 1, 0, 230, 580),
    ("self-extend", 64, 0.0, 3, 0, 600, None), ("dca", 30, 0.0, 1, 250, 600, None), ("dca", 30, 0.0, 1, 250, 230, 580)])
def test_causal_flash_runs_equal_the_reference_at_default_chunks(kind, window, leaky, group, chunk_size, sq, kv_len):
    """The CPU causal path at its default 256-query chunks: keys in one branch, the causal diagonal, window edges
    and DCA's chunk grid, for prefill and for a chunk of queries appended to a cache (positions 350..579)."""
    q, k, v = make_qkv(1, 4, 2, sq, 600, 16, seed=7)
    n = None if kv_len is None else torch.tensor([kv_len])
    args = (q, k, v, None, inv_freq_of(16), 1.0, n, 0.3, window, leaky, "causal", kind, group, chunk_size)
    torch.testing.assert_close(rerope_chunked(*args), rerope_reference(*args), atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("kind,window,group,chunk_size", [("self-extend", 40, 4, 0), ("self-extend", 3, 1, 0),
                                                         ("dca", 4, 1, 44), ("dca", 0, 1, 40)])
def test_new_kinds_are_plain_rope_where_their_window_covers_the_length(kind, window, group, chunk_size):
    """Self-Extend with W >= length (or G = 1) and DCA with one chunk (chunk - local >= length) are RoPE itself."""
    q, k, v = make_qkv(2, 4, 2, 40, 40, 16, seed=1)
    expected = rope_then_attention(q, k, v, inv_freq_of(16), 1.2, None, 0.3)
    got = torch.ops.lcc.rerope_attention(q, k, v, None, inv_freq_of(16), 1.2, None, 0.3, window, 0.0, "causal",
                                         kind=kind, group=group, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind,window,group,chunk_size", KINDS + [("rerope", 5, 1, 0)])
def test_decode_step_equals_the_last_prefill_row(kind, window, group, chunk_size):
    """One query at position n - 1 against a cache of n un-rotated keys (longer than n) is prefill's last row."""
    q, k, v = make_qkv(1, 4, 2, 30, 30, 16, seed=2)
    call = dict(kind=kind, group=group, chunk_size=chunk_size)
    full = torch.ops.lcc.rerope_attention(q, k, v, None, inv_freq_of(16), 1.0, None, 0.3, window, 0.0, "causal", **call)
    pad = torch.cat([k, torch.randn(1, 2, 5, 16)], 2), torch.cat([v, torch.randn(1, 2, 5, 16)], 2)
    step = torch.ops.lcc.rerope_attention(q[:, :, -1:], *pad, None, inv_freq_of(16), 1.0, torch.tensor(30), 0.3, window,
                                          0.0, "causal", **call)
    torch.testing.assert_close(step, full[:, :, -1:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind,window,group,chunk_size,match", [("nope", 4, 1, 0, "kind"),
                                                               ("self-extend", 4, 0, 0, "group"),
                                                               ("dca", 8, 1, 8, "local window"),
                                                               ("rerope", -1, 1, 0, "window")])
def test_bad_mapping_parameters_are_refused(kind, window, group, chunk_size, match):
    q, k, v = make_qkv(1, 2, 1, 4, 4, 8)
    with pytest.raises(ValueError, match=match):
        rerope_chunked(q, k, v, None, inv_freq_of(8), 1.0, None, 0.3, window, 0.0, "causal", kind, group, chunk_size)


def test_cost_prices_each_kind_by_its_branches():
    """Same pairs; a window edge for ReRoPE and Self-Extend, chunk-boundary tiles and three q rotations for DCA."""
    cost = registry.get("rerope_attention").cost
    S = 8192
    flops = {kind: float(cost(1, 8, 2, S, S, 64, 64, 64, 512, kind=kind, chunk_size=6144)[0])
             for kind in ("rerope", "self-extend", "dca")}
    pairs = S * (S + 1) // 2
    plain = 8 * pairs * (2 * 64 + 2 * 64)
    assert flops["rerope"] == flops["self-extend"] and plain < flops["rerope"] < 1.1 * plain
    assert plain < flops["dca"] < 1.1 * plain


def test_dca_cost_counts_the_kernel_tiles_across_chunk_boundaries():
    """The DCA kernel's extra q.k products, counted as its loop runs them (64-query blocks, 64-key tiles from key 0
    to the block's last position; a tile across a chunk boundary makes two more), against the cost's estimate."""
    cost = registry.get("rerope_attention").cost
    S, n, local = 8192, 1000, 24
    extra = 0
    for hi in range(64, S + 1, 64):
        crossing = sum(1 for t in range(0, hi, 64) if t // n != (min(t + 64, hi) - 1) // n)
        extra += 64 * crossing * 2 * 64  # query rows x tiles x two more products of 64 keys each
    with_bounds, one_chunk = (float(cost(1, 1, 1, S, S, 64, 64, 64, local, kind="dca", chunk_size=local + c)[0])
                              for c in (n, S))
    counted = (with_bounds - one_chunk) / (2 * 64)  # products of 2 D FLOPs; one chunk crosses no boundary
    assert abs(counted - extra) < 0.05 * extra
