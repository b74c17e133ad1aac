"""Fused remapped-position flash attention in Triton for every kind, prefill and split-K decode.

``lcc.rerope_attention`` takes q and k un-rotated.  Inside the window (r = p_i - j < w)
the score is RoPE's, <rope(q, p_i), rope(k, j)>; outside it is the kind's second branch
(:mod:`lcc.ops.remap`): ReRoPE / Leaky ReRoPE (Su 2023) <rope(q, w + f (p_i - w)), rope(k, f j)>
(relative position w + f (r - w), f = leaky_factor), Self-Extend (Jin et al. 2024)
<rope(q, p_i // G + W - W // G), rope(k, j // G)>.  Both split a query's keys at the same
window edge, so one kernel serves them; only the prologue's positions differ.  For ReRoPE (f = 0)
the out-of-window key is rope(k, 0) = k times the attention scaling on its rotary
channels: q rotated to the fixed position w against the un-rotated cache.

The rotations are an elementwise prologue with ``lcc.rope``'s own arithmetic (so they are
bit-identical to the reference's): both q rotations, the in-window keys (all of them in
prefill, only the window's tail in decode), and for Leaky ReRoPE every key at f j (so
Leaky decode reads and writes the cache once more per step; ReRoPE decode does not, as
its out-of-window keys are the cache itself; Self-Extend decode rotates every key to j // G).
An earlier version rotated in the kernel with libdevice sin/cos: 60-90 s to compile per
variant and 2.4 MB cubins.  The attention itself is one pass with an online softmax (Triton tutorial 06) whose key
tiles fall in three stages per query block:

    [0, far)   every pair out of the window: one q.k against the out-of-window keys
    [far, mid) the window's edge: both q.k products, selected pair by pair
    [mid, hi)  every pair inside the window (and the causal diagonal): one q.k

so only the BLOCK_M + BLOCK_N keys at the edge pay two products.  Decode (Sq = 1) has one
position, so its keys split cleanly in two; it packs the GQA group's query heads into the
rows of a program and splits the keys across programs (flash decoding), the partials
merged by :func:`lcc.backends.triton.decode.merge_splits`.

Dual Chunk Attention (An et al. 2024) has its own pair, :func:`dca_fwd` and
:func:`dca_decode_split`: its three branches share one key rotation (j mod n, n the chunk
length), and the branch of a pair is the number of chunks between query and key (0 intra,
1 successive, 2+ inter), so a key tile inside one chunk needs one q.k product with each row's
q rotation selected (:func:`attend_dca`); only tiles across a chunk boundary make three.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lcc.backends.triton.decode import merge_splits, num_splits, split_program, store_partial
from lcc.backends.triton.interpret import check_device, dot_precision, launcher, pow2, tile_config, upcast
from lcc.backends.triton.online_softmax import LOG2E, normalize, row_program, softmax_update
from lcc.ops import registry, remap
from lcc.ops.masks import MaskSpec
from lcc.ops.rerope import query_positions, rerope_reference
from lcc.ops.rope import rope_reference


@triton.jit
def attend(q_in, q_out, q_pos, ki_base, ko_base, v_base, ki_off, lo, hi, m_i, l_i, acc,
           stride_kin, stride_kon, stride_vn, offs_d, offs_dv, window, attn_scale, qk_scale,
           MODE: tl.constexpr, SCALE_K: tl.constexpr, R: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
           BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """Online-softmax update of (m_i, l_i, acc) with keys lo..hi-1.

    MODE 0: out-of-window score only; 1: both, selected per pair; 2: in-window score only.
    ``ki_base`` holds the in-window (rotated) keys from position ``ki_off`` on.
    """
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < hi
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
                    mask=kv_ok[:, None] & (offs_dv[None, :] < DV), other=0.0).to(q_in.dtype)
        if MODE != 0:
            k_in = tl.load(ki_base + (offs_n - ki_off)[None, :] * stride_kin + offs_d[:, None],
                           mask=kv_ok[None, :] & (offs_d[:, None] < D), other=0.0)
            s_in = tl.dot(q_in, k_in.to(q_in.dtype), input_precision=PREC)
        if MODE != 2:
            k_out = tl.load(ko_base + offs_n[None, :] * stride_kon + offs_d[:, None],
                            mask=kv_ok[None, :] & (offs_d[:, None] < D), other=0.0)
            if SCALE_K:  # rope(k, 0): cos = attention scaling, sin = 0 on the rotary channels
                k_out = k_out.to(tl.float32)  # (the interpreter cannot do arithmetic on bf16 directly)
                k_out = tl.where(offs_d[:, None] < R, k_out * attn_scale, k_out)
            s_out = tl.dot(q_out, k_out.to(q_out.dtype), input_precision=PREC)
        if MODE == 0:
            qk = s_out
        elif MODE == 2:
            qk = s_in
        else:
            qk = tl.where(q_pos[:, None] - offs_n[None, :] < window, s_in, s_out)
        keep = kv_ok[None, :]
        if MODE != 0:  # the causal diagonal lies in these stages
            keep = keep & (offs_n[None, :] <= q_pos[:, None])
        qk = tl.where(keep, qk * qk_scale, float("-inf"))
        m_i, l_i, acc = softmax_update(qk, v, m_i, l_i, acc, PREC)
    return m_i, l_i, acc


@triton.jit
def rerope_fwd(QI, QO, KI, KO, V, O, KI_OFF, Q_POS, KV_LEN,
               stride_qb, stride_qh, stride_qm, stride_kib, stride_kih, stride_kin,
               stride_kob, stride_koh, stride_kon, stride_vb, stride_vh, stride_vn,
               stride_ob, stride_oh, stride_om, stride_pb,
               H, GROUP, SQ, window, attn_scale, qk_scale,
               SCALE_K: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               PREC: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert((BLOCK_D >= D) & (BLOCK_DV >= DV) & (R <= D))
    offs_m, b, h, hk = row_program(H, GROUP, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < SQ
    q_off = b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q_in = tl.load(QI + q_off, mask=q_mask, other=0.0)
    q_out = tl.load(QO + q_off, mask=q_mask, other=0.0)
    if UPCAST:  # Triton's interpreter multiplies bf16 raw bits in tl.dot; only the interpreter sets this
        q_in = q_in.to(tl.float32)
        q_out = q_out.to(tl.float32)
    q_pos = tl.load(Q_POS + b * stride_pb + offs_m, mask=row_ok, other=0)
    kv_len = tl.load(KV_LEN + b)
    q_lo = tl.min(tl.where(row_ok, q_pos, 2147483647), 0)
    q_hi = tl.max(tl.where(row_ok, q_pos, -1), 0)
    hi = tl.maximum(tl.minimum(kv_len, q_hi + 1), 0)
    far = tl.minimum(tl.maximum(q_lo - window + 1, 0) // BLOCK_N * BLOCK_N, hi)  # keys < far: r >= w in every row
    mid = tl.minimum(far + tl.cdiv(tl.maximum(q_hi - window + 1 - far, 0), BLOCK_N) * BLOCK_N, hi)  # >= mid: r < w

    ki_base = KI + b.to(tl.int64) * stride_kib + hk.to(tl.int64) * stride_kih
    ko_base = KO + b.to(tl.int64) * stride_kob + hk.to(tl.int64) * stride_koh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    ki_off = tl.load(KI_OFF + b)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i, l_i, acc = attend(q_in, q_out, q_pos, ki_base, ko_base, v_base, ki_off, 0, far, m_i, l_i, acc,
                            stride_kin, stride_kon, stride_vn, offs_d, offs_dv, window, attn_scale, qk_scale,
                            0, SCALE_K, R, D, DV, BLOCK_N, PREC)
    m_i, l_i, acc = attend(q_in, q_out, q_pos, ki_base, ko_base, v_base, ki_off, far, mid, m_i, l_i, acc,
                            stride_kin, stride_kon, stride_vn, offs_d, offs_dv, window, attn_scale, qk_scale,
                            1, SCALE_K, R, D, DV, BLOCK_N, PREC)
    m_i, l_i, acc = attend(q_in, q_out, q_pos, ki_base, ko_base, v_base, ki_off, mid, hi, m_i, l_i, acc,
                            stride_kin, stride_kon, stride_vn, offs_d, offs_dv, window, attn_scale, qk_scale,
                            2, SCALE_K, R, D, DV, BLOCK_N, PREC)
    out = normalize(acc, l_i)  # rows that keep no key give 0, as the reference
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def rerope_decode_split(QI, QO, KI, KO, V, KI_OFF, Q_POS, KV_LEN, MID_O, MID_LSE,
                        stride_qb, stride_qh, stride_kib, stride_kih, stride_kin, stride_kob, stride_koh, stride_kon,
                        stride_vb, stride_vh, stride_vn, stride_pb, HKV, GROUP, SPLITS, window, attn_scale, qk_scale,
                        SCALE_K: tl.constexpr, R: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                        D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                        PREC: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert((BLOCK_D >= D) & (BLOCK_DV >= DV) & (R <= D))
    split, b, hk = split_program(HKV)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_g < GROUP
    heads = hk * GROUP + offs_g
    q_off = b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q_in = tl.load(QI + q_off, mask=q_mask, other=0.0)
    q_out = tl.load(QO + q_off, mask=q_mask, other=0.0)
    if UPCAST:
        q_in = q_in.to(tl.float32)
        q_out = q_out.to(tl.float32)
    pos = tl.load(Q_POS + b * stride_pb)
    q_pos = tl.zeros([BLOCK_G], dtype=tl.int32) + pos
    kv_len = tl.load(KV_LEN + b)
    hi = tl.maximum(tl.minimum(kv_len, pos + 1), 0)
    chunk = tl.cdiv(tl.cdiv(hi, SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, hi)
    far = tl.minimum(tl.maximum(pos - window + 1, start), end)  # one position: keys < far are all out of the window
    ki_base = KI + b.to(tl.int64) * stride_kib + hk.to(tl.int64) * stride_kih
    ko_base = KO + b.to(tl.int64) * stride_kob + hk.to(tl.int64) * stride_koh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    ki_off = tl.load(KI_OFF + b)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    m_i, l_i, acc = attend(q_in, q_out, q_pos, ki_base, ko_base, v_base, ki_off, start, far, m_i, l_i, acc,
                            stride_kin, stride_kon, stride_vn, offs_d, offs_dv, window, attn_scale, qk_scale,
                            0, SCALE_K, R, D, DV, BLOCK_N, PREC)
    m_i, l_i, acc = attend(q_in, q_out, q_pos, ki_base, ko_base, v_base, ki_off, far, end, m_i, l_i, acc,
                            stride_kin, stride_kon, stride_vn, offs_d, offs_dv, window, attn_scale, qk_scale,
                            2, SCALE_K, R, D, DV, BLOCK_N, PREC)
    row = (b * HKV * GROUP + heads) * SPLITS + split
    store_partial(MID_O, MID_LSE, row, row_ok, offs_dv, m_i, l_i, acc, DV)


@triton.jit
def attend_dca(q_intra, q_succ, q_inter, q_pos, q_chunk, k_base, v_base, lo, hi, m_i, l_i, acc, stride_kn, stride_vn,
               offs_d, offs_dv, chunk_len, qk_scale, D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr,
               PREC: tl.constexpr):
    """Online-softmax update with keys lo..hi-1 under Dual Chunk Attention's three branches.

    Every key is rotated to j mod n (``k_base``), so a pair's branch only picks the query's
    rotation: by the chunks between them, 0 intra, 1 successive, 2 or more inter.  A key tile
    inside one key chunk gives each row one branch, so the row's rotation is selected and one
    q.k product is made; only a tile across a chunk boundary makes the three and selects pair
    by pair.
    """
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < hi
        k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                    mask=kv_ok[None, :] & (offs_d[:, None] < D), other=0.0).to(q_intra.dtype)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
                    mask=kv_ok[:, None] & (offs_dv[None, :] < DV), other=0.0).to(q_intra.dtype)
        first = start // chunk_len
        if first == (tl.minimum(start + BLOCK_N, hi) - 1) // chunk_len:
            row_back = (q_chunk - first)[:, None]
            q_row = tl.where(row_back == 0, q_intra, tl.where(row_back == 1, q_succ, q_inter))
            qk = tl.dot(q_row, k, input_precision=PREC)
        else:
            pair_back = q_chunk[:, None] - (offs_n // chunk_len)[None, :]
            qk = tl.where(pair_back == 0, tl.dot(q_intra, k, input_precision=PREC),
                          tl.where(pair_back == 1, tl.dot(q_succ, k, input_precision=PREC),
                                   tl.dot(q_inter, k, input_precision=PREC)))
        keep = kv_ok[None, :] & (offs_n[None, :] <= q_pos[:, None])
        qk = tl.where(keep, qk * qk_scale, float("-inf"))
        m_i, l_i, acc = softmax_update(qk, v, m_i, l_i, acc, PREC)
    return m_i, l_i, acc


@triton.jit
def dca_fwd(Q0, Q1, Q2, K, V, O, Q_POS, KV_LEN,
            stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
            stride_ob, stride_oh, stride_om, stride_pb, H, GROUP, SQ, chunk_len, qk_scale,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
            BLOCK_DV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Prefill: a block of queries against every key up to its causal limit (:func:`attend_dca`)."""
    tl.static_assert((BLOCK_D >= D) & (BLOCK_DV >= DV))
    offs_m, b, h, hk = row_program(H, GROUP, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < SQ
    q_off = b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q0 = tl.load(Q0 + q_off, mask=q_mask, other=0.0)
    q1 = tl.load(Q1 + q_off, mask=q_mask, other=0.0)
    q2 = tl.load(Q2 + q_off, mask=q_mask, other=0.0)
    if UPCAST:  # Triton's interpreter multiplies bf16 raw bits in tl.dot; only the interpreter sets this
        q0, q1, q2 = q0.to(tl.float32), q1.to(tl.float32), q2.to(tl.float32)
    q_pos = tl.load(Q_POS + b * stride_pb + offs_m, mask=row_ok, other=0)
    kv_len = tl.load(KV_LEN + b)
    q_hi = tl.max(tl.where(row_ok, q_pos, -1), 0)
    hi = tl.maximum(tl.minimum(kv_len, q_hi + 1), 0)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i, l_i, acc = attend_dca(q0, q1, q2, q_pos, q_pos // chunk_len, k_base, v_base, 0, hi, m_i, l_i, acc,
                               stride_kn, stride_vn, offs_d, offs_dv, chunk_len, qk_scale, D, DV, BLOCK_N, PREC)
    out = normalize(acc, l_i)  # rows that keep no key give 0, as the reference
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def dca_decode_split(Q0, Q1, Q2, K, V, Q_POS, KV_LEN, MID_O, MID_LSE,
                     stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                     stride_pb, HKV, GROUP, SPLITS, chunk_len, qk_scale,
                     BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Decode: a GQA group's query heads (one position) against one split of the cache."""
    tl.static_assert((BLOCK_D >= D) & (BLOCK_DV >= DV))
    split, b, hk = split_program(HKV)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_g < GROUP
    heads = hk * GROUP + offs_g
    q_off = b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q0 = tl.load(Q0 + q_off, mask=q_mask, other=0.0)
    q1 = tl.load(Q1 + q_off, mask=q_mask, other=0.0)
    q2 = tl.load(Q2 + q_off, mask=q_mask, other=0.0)
    if UPCAST:
        q0, q1, q2 = q0.to(tl.float32), q1.to(tl.float32), q2.to(tl.float32)
    pos = tl.load(Q_POS + b * stride_pb)
    q_pos = tl.zeros([BLOCK_G], dtype=tl.int32) + pos
    kv_len = tl.load(KV_LEN + b)
    hi = tl.maximum(tl.minimum(kv_len, pos + 1), 0)
    chunk = tl.cdiv(tl.cdiv(hi, SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, hi)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    m_i, l_i, acc = attend_dca(q0, q1, q2, q_pos, q_pos // chunk_len, k_base, v_base, start, end, m_i, l_i, acc,
                               stride_kn, stride_vn, offs_d, offs_dv, chunk_len, qk_scale, D, DV, BLOCK_N, PREC)
    row = (b * HKV * GROUP + heads) * SPLITS + split
    store_partial(MID_O, MID_LSE, row, row_ok, offs_dv, m_i, l_i, acc, DV)


KERNELS = (rerope_fwd, rerope_decode_split, dca_fwd, dca_decode_split)


def config(head_dim: int, dtype: torch.dtype, q_len: int) -> dict:
    """Block sizes: a tile holds two q blocks (q rotated both ways), so BLOCK_M is half of plain flash's."""
    return tile_config(head_dim, dtype, q_len, {64: (64, 64, 4, 3), 128: (64, 64, 4, 2), None: (32, 32, 4, 2)})


def rotate_inputs(q, k, q_pos, inv_freq, attention_scaling, window, leaky_factor, tail: bool, kind="rerope", group=1):
    """The prologue: (q_in, q_out, k_in, k_in_offset [B], k_out) with lcc.rope's arithmetic.

    The out-of-window positions are the kind's second branch (:func:`lcc.ops.remap.positions`).
    ``tail``: rotate only the keys a single query position can see inside the window,
    gathered per sequence (k_in[b, :, t] is key ki_off[b] + t), as decode needs.
    """
    B, Sk = k.shape[0], k.shape[2]
    k_pos = torch.arange(Sk, device=k.device).expand(B, Sk)
    q_far, k_far = remap.positions(kind, q_pos, k_pos, window, leaky_factor, group, 0)[1]
    q_in = rope_reference(q, q_pos, inv_freq, attention_scaling).contiguous()
    q_out = rope_reference(q, q_far, inv_freq, attention_scaling).contiguous()
    if tail:
        n = min(window, Sk)
        ki_off = (q_pos[:, -1] - window + 1).clamp(min=0)
        idx = ki_off[:, None] + torch.arange(n, device=k.device)
        keys = k[torch.arange(B, device=k.device)[:, None], :, idx.clamp(max=Sk - 1)].transpose(1, 2)
        k_in = rope_reference(keys, idx, inv_freq, attention_scaling)
    else:
        ki_off = torch.zeros(B, dtype=torch.long, device=k.device)
        k_in = rope_reference(k, k_pos, inv_freq, attention_scaling)
    k_out = k
    if kind != "rerope" or leaky_factor != 0.0:
        k_out = rope_reference(k, k_far, inv_freq, attention_scaling)
    return q_in, q_out, k_in.contiguous(), ki_off.to(torch.int32), k_out


def rerope_flash(q, k, v, positions=None, inv_freq=None, attention_scaling=1.0, kv_len=None, scale=None,
                 window=512, leaky_factor=0.0, mask="causal", kind="rerope", group=1, chunk_size=0, block_m=0,
                 block_n=0, splits=0, num_warps=0, num_stages=0):
    """``lcc.rerope_attention`` by the Triton kernels (causal, every kind; DCA by :func:`dca_flash`): CUDA tensors
    compiled, CPU tensors interpreted."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    if MaskSpec.parse(mask).kind != "causal" or Hq % Hkv:
        raise ValueError(f"the ReRoPE kernels take a causal mask and Hq % Hkv == 0, got {mask}, {Hq}/{Hkv}")
    remap.check(kind, int(window), float(leaky_factor), int(group), int(chunk_size))
    if 2 * inv_freq.shape[0] > D:
        raise ValueError(f"rotary dim {2 * inv_freq.shape[0]} exceeds head dim {D}")
    scale = D**-0.5 if scale is None else scale
    window = int(window)
    q_pos, n = query_positions(positions, kv_len, B, Sq, Sk, q.device)
    if kind == "dca":
        return dca_flash(q, k, v, q_pos, n, inv_freq, attention_scaling, scale, window, int(chunk_size), block_m,
                         block_n, splits, num_warps, num_stages)
    q_in, q_out, k_in, ki_off, k_out = rotate_inputs(q, k, q_pos, inv_freq, attention_scaling, window,
                                                     float(leaky_factor), Sq == 1, kind, int(group))
    k_out, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_out, v))
    q_pos, lens = q_pos.to(torch.int32).contiguous(), n.reshape(B).to(torch.int32).contiguous()
    cfg = config(D, q.dtype, Sq)
    common = dict(SCALE_K=kind == "rerope" and leaky_factor == 0.0 and attention_scaling != 1.0,
                  R=2 * inv_freq.shape[0], D=D, DV=Dv,
                  BLOCK_D=pow2(D), BLOCK_DV=pow2(Dv), PREC=dot_precision(q.dtype),
                  UPCAST=upcast(rerope_fwd, q.dtype))
    tensors = (q_in, q_out, k_in, k_out, v)
    strides = (q_in.stride(0), q_in.stride(1), *k_in.stride()[:3], *k_out.stride()[:3], *v.stride()[:3])
    scalars = (window, float(attention_scaling), scale * LOG2E)
    check_device(rerope_fwd, q)
    if Sq == 1:
        block_n = block_n or cfg["block_n"]
        splits = splits or num_splits(B * Hkv, Sk, block_n, q.device)
        mid_o = torch.empty(B, Hq, splits, Dv, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
        launcher(rerope_decode_split)[(splits, B * Hkv)](
            *tensors, ki_off, q_pos, lens, mid_o, mid_lse, *strides, q_pos.stride(0), Hkv, Hq // Hkv, splits,
            *scalars, BLOCK_G=pow2(Hq // Hkv), BLOCK_N=block_n, **common,
            num_warps=num_warps or 4, num_stages=num_stages or 2)
        return merge_splits(mid_o, mid_lse, q.new_empty(B, Hq, 1, Dv))
    bm, bn = block_m or cfg["block_m"], block_n or cfg["block_n"]
    o = q.new_empty(B, Hq, Sq, Dv)
    launcher(rerope_fwd)[(triton.cdiv(Sq, bm), B * Hq)](
        *tensors, o, ki_off, q_pos, lens, strides[0], strides[1], q_in.stride(2), *strides[2:],
        o.stride(0), o.stride(1), o.stride(2), q_pos.stride(0), Hq, Hq // Hkv, Sq, *scalars,
        BLOCK_M=bm, BLOCK_N=bn, **common,
        num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"])
    return o


def dca_flash(q, k, v, q_pos, n, inv_freq, attention_scaling, scale, window, chunk_size, block_m=0, block_n=0,
              splits=0, num_warps=0, num_stages=0):
    """Dual Chunk Attention by :func:`dca_fwd` / :func:`dca_decode_split`, after the prologue: the keys rotated
    once to j mod n, q to each branch's positions (:func:`lcc.ops.remap.positions`), queries at ``q_pos`` [B, Sq]
    against ``n`` [B, 1] valid keys.  Decode rotates every cached key again, as Self-Extend's does."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    k_pos = torch.arange(Sk, device=k.device).expand(B, Sk)
    maps = remap.positions("dca", q_pos, k_pos, window, 0.0, 1, chunk_size)
    q0, q1, q2 = (rope_reference(q, p, inv_freq, attention_scaling).contiguous() for p, _ in maps)
    k_rot = rope_reference(k, maps[0][1], inv_freq, attention_scaling)
    v = v if v.stride(-1) == 1 else v.contiguous()
    q_pos, lens = q_pos.to(torch.int32).contiguous(), n.reshape(B).to(torch.int32).contiguous()
    cfg = dca_config(D, q.dtype, Sq)
    common = dict(D=D, DV=Dv, BLOCK_D=pow2(D), BLOCK_DV=pow2(Dv), PREC=dot_precision(q.dtype),
                  UPCAST=upcast(dca_fwd, q.dtype))
    strides = (q0.stride(0), q0.stride(1), *k_rot.stride()[:3], *v.stride()[:3])
    check_device(dca_fwd, q)
    if Sq == 1:
        block_n = block_n or cfg["block_n"]
        splits = splits or num_splits(B * Hkv, Sk, block_n, q.device)
        mid_o = torch.empty(B, Hq, splits, Dv, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
        launcher(dca_decode_split)[(splits, B * Hkv)](
            q0, q1, q2, k_rot, v, q_pos, lens, mid_o, mid_lse, *strides, q_pos.stride(0), Hkv, Hq // Hkv, splits,
            chunk_size - window, scale * LOG2E, BLOCK_G=pow2(Hq // Hkv), BLOCK_N=block_n, **common,
            num_warps=num_warps or 4, num_stages=num_stages or 2)
        return merge_splits(mid_o, mid_lse, q.new_empty(B, Hq, 1, Dv))
    bm, bn = block_m or cfg["block_m"], block_n or cfg["block_n"]
    o = q.new_empty(B, Hq, Sq, Dv)
    launcher(dca_fwd)[(triton.cdiv(Sq, bm), B * Hq)](
        q0, q1, q2, k_rot, v, o, q_pos, lens, strides[0], strides[1], q0.stride(2), *strides[2:],
        o.stride(0), o.stride(1), o.stride(2), q_pos.stride(0), Hq, Hq // Hkv, Sq, chunk_size - window,
        scale * LOG2E, BLOCK_M=bm, BLOCK_N=bn, **common,
        num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"])
    return o


def dca_config(head_dim: int, dtype: torch.dtype, q_len: int) -> dict:
    """Block sizes: a DCA program holds three q blocks (one per branch), so past head dim 64 BLOCK_M is 32."""
    return tile_config(head_dim, dtype, q_len, {64: (64, 64, 4, 3), 128: (32, 64, 4, 2), None: (32, 32, 4, 2)})


def aot_variants(full: bool = False) -> list:
    """:class:`lcc.backends.triton.aot.Variant` s of the four kernels at the launchers' block sizes."""
    from lcc.backends.triton.aot import TRITON_TYPES, Variant

    out = []
    for dtype in (list(TRITON_TYPES) if full else [torch.bfloat16]):
        t = TRITON_TYPES[dtype]
        for d in ((64, 128, 256) if full else (128,)):
            cfg = config(d, dtype, 4096)
            for scale_k in (False, True):
                name = f"[{t},d={d}{',scale_k' if scale_k else ''}]"
                consts = dict(SCALE_K=scale_k, R=d, D=d, DV=d, BLOCK_D=pow2(d), BLOCK_DV=pow2(d),
                              PREC=dot_precision(dtype), UPCAST=False)
                ptrs = {"QI": t, "QO": t, "KI": t, "KO": t, "V": t, "KI_OFF": "i32", "Q_POS": "i32", "KV_LEN": "i32"}
                out.append(Variant("rerope_fwd" + name, rerope_fwd, {**ptrs, "O": t},
                                   dict(BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], **consts),
                                   floats=("attn_scale", "qk_scale"),
                                   options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])))
                out.append(Variant("rerope_decode_split" + name, rerope_decode_split,
                                   {**ptrs, "MID_O": "fp32", "MID_LSE": "fp32"},
                                   dict(BLOCK_G=16, BLOCK_N=cfg["block_n"], **consts),
                                   floats=("attn_scale", "qk_scale"), options=dict(num_warps=4, num_stages=2)))
            cfg = dca_config(d, dtype, 4096)
            consts = dict(D=d, DV=d, BLOCK_D=pow2(d), BLOCK_DV=pow2(d), PREC=dot_precision(dtype), UPCAST=False)
            ptrs = {"Q0": t, "Q1": t, "Q2": t, "K": t, "V": t, "Q_POS": "i32", "KV_LEN": "i32"}
            out.append(Variant(f"dca_fwd[{t},d={d}]", dca_fwd, {**ptrs, "O": t},
                               dict(BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], **consts), floats=("qk_scale",),
                               options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])))
            out.append(Variant(f"dca_decode_split[{t},d={d}]", dca_decode_split,
                               {**ptrs, "MID_O": "fp32", "MID_LSE": "fp32"},
                               dict(BLOCK_G=16, BLOCK_N=cfg["block_n"], **consts), floats=("qk_scale",),
                               options=dict(num_warps=4, num_stages=2)))
    return out


def _impl(q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor, mask,
          kind="rerope", group=1, chunk_size=0):
    """The op on CUDA: the kernels for causal masks, the reference for the rest."""
    if MaskSpec.parse(mask).kind != "causal":
        return rerope_reference(q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window,
                                leaky_factor, mask, kind, group, chunk_size)
    return rerope_flash(q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor,
                        kind=kind, group=group, chunk_size=chunk_size)


from lcc.backends.triton.register import kernel_only  # noqa: E402

for _algo in ("auto", "flash"):
    registry.register_impl("rerope_attention", registry.Impl(_algo, "cuda", _impl, source=__name__))
registry.register_lowering("rerope_attention", "triton", kernel_only(
    "fused Triton kernels on CUDA: ReRoPE / Self-Extend (two branches), DCA (three)"))

__all__ = ["rerope_flash", "dca_flash", "rotate_inputs", "config", "dca_config", "aot_variants", "KERNELS"]
