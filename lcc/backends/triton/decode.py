"""Split-K flash decoding in Triton (Dao et al. 2023, "Flash-Decoding for long-context inference").

One query token per sequence against a long cache: the cache's kept range is cut into
``splits`` chunks, each program attends the group of query heads that share one kv head
(GQA without repeating K/V) to its chunk and writes a partial output plus its
log-sum-exp; a second kernel merges the partials.  Masks: causal, or sliding window with
sinks (the window and the sinks are two key ranges, so no tile is wasted on masked keys).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from lcc.backends.triton.interpret import check_device, dot_precision, is_interpreted
from lcc.ops.masks import MaskSpec

LOG2E = 1.4426950408889634


@triton.jit
def _attend_range(q, k_base, v_base, lo, hi, m_i, l_i, acc, stride_kn, stride_vn, qk_scale,
                  offs_d, offs_dv, D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                  UPCAST: tl.constexpr):
    """Online-softmax update of (m_i, l_i, acc) with keys lo..hi-1."""
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < hi
        k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                    mask=kv_ok[None, :] & (offs_d[:, None] < D), other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
                    mask=kv_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, k, input_precision=PREC) * qk_scale
        qk = tl.where(kv_ok[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
        m_i = m_ij
    return m_i, l_i, acc


@triton.jit
def _decode_split(Q, K, V, KV_LEN, MID_O, MID_LSE,
                  stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                  HKV, GROUP, SPLITS, window, sinks, qk_scale,
                  SLIDING: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                  D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  PREC: tl.constexpr, UPCAST: tl.constexpr):
    split = tl.program_id(0)
    pid = tl.program_id(1)
    b = pid // HKV
    hk = pid % HKV
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    heads = hk * GROUP + offs_g
    q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=(offs_g[:, None] < GROUP) & (offs_d[None, :] < D), other=0.0)
    if UPCAST:  # Triton's interpreter multiplies bf16 raw bits in tl.dot; only the interpreter sets this
        q = q.to(tl.float32)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    kv_len = tl.load(KV_LEN + b)
    lo = 0
    if SLIDING:  # the query sits at kv_len - 1 and keeps keys > kv_len - 1 - window
        lo = tl.maximum(kv_len - window, 0)
    chunk = tl.cdiv(tl.cdiv(kv_len - lo, SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * chunk
    end = tl.minimum(start + chunk, kv_len)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    if SLIDING:
        if split == 0:  # sinks left of the window
            m_i, l_i, acc = _attend_range(q, k_base, v_base, 0, tl.minimum(sinks, lo), m_i, l_i, acc,
                                          stride_kn, stride_vn, qk_scale, offs_d, offs_dv, D, DV, BLOCK_N, PREC, UPCAST)
    m_i, l_i, acc = _attend_range(q, k_base, v_base, start, end, m_i, l_i, acc,
                                  stride_kn, stride_vn, qk_scale, offs_d, offs_dv, D, DV, BLOCK_N, PREC, UPCAST)
    row = (b * HKV * GROUP + heads) * SPLITS + split
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(MID_O + row[:, None] * DV + offs_dv[None, :], out,
             mask=(offs_g[:, None] < GROUP) & (offs_dv[None, :] < DV))
    tl.store(MID_LSE + row, lse, mask=offs_g < GROUP)


@triton.jit
def _decode_merge(MID_O, MID_LSE, O, SPLITS, stride_ob, stride_oh, H,
                  BLOCK_S: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr):
    """out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M): the softmax over all splits."""
    pid = tl.program_id(0)
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    lse = tl.load(MID_LSE + pid * SPLITS + offs_s, mask=offs_s < SPLITS, other=float("-inf"))
    o = tl.load(MID_O + (pid * SPLITS + offs_s)[:, None] * DV + offs_dv[None, :],
                mask=(offs_s[:, None] < SPLITS) & (offs_dv[None, :] < DV), other=0.0)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m)
    denom = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(denom == 0.0, 1.0, denom)
    b = pid // H
    h = pid % H
    tl.store(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_dv, out.to(O.dtype.element_ty),
             mask=offs_dv < DV)


KERNELS = (_decode_split, _decode_merge)


def default_block_n(head_dim: int) -> int:
    return 64 if head_dim <= 128 else 32


@functools.lru_cache(maxsize=None)
def _sm_count(index) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_splits(batch_kv_heads: int, k_len: int, block_n: int, device) -> int:
    """Enough programs to fill the GPU (about 4 per SM), each with at least 4 key blocks."""
    sms = _sm_count(device.index) if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(4 * sms, batch_kv_heads), triton.cdiv(k_len, 4 * block_n), 256))


def flash_decode(q, k, v, kv_len=None, scale=None, mask="causal", splits=0, block_n=0, num_warps=4, num_stages=2):
    """``lcc.attention`` for Sq == 1 with a causal or sliding mask, by split-K flash decoding."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    spec = MaskSpec.parse(mask)
    if Sq != 1 or spec.kind not in ("causal", "sliding") or Hq % Hkv:
        raise ValueError(f"flash_decode takes one query and a causal/sliding mask, got Sq={Sq}, {mask}")
    scale = D**-0.5 if scale is None else scale
    window, sinks = (spec.args["window"], spec.args["sinks"]) if spec.kind == "sliding" else (0, 0)
    lens = torch.full((B,), Sk, dtype=torch.int32, device=q.device) if kv_len is None else \
        kv_len.to(device=q.device, dtype=torch.int32).reshape(-1).expand(B).contiguous()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    group = Hq // Hkv
    block_n = block_n or default_block_n(D)
    span = min(Sk, window) if spec.kind == "sliding" else Sk
    splits = splits or num_splits(B * Hkv, span, block_n, q.device)
    mid_o = torch.empty(B, Hq, splits, Dv, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
    o = q.new_empty(B, Hq, 1, Dv)
    check_device(_decode_split, q)
    block_dv = max(16, triton.next_power_of_2(Dv))
    _decode_split[(splits, B * Hkv)](
        q, k, v, lens, mid_o, mid_lse, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), Hkv, group, splits, window, sinks, scale * LOG2E,
        SLIDING=spec.kind == "sliding", BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, D=D, DV=Dv,
        BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=block_dv,
        PREC=dot_precision(q.dtype),
        UPCAST=is_interpreted(_decode_split) and q.dtype == torch.bfloat16,
        num_warps=num_warps, num_stages=num_stages)
    _decode_merge[(B * Hq,)](mid_o, mid_lse, o, splits, o.stride(0), o.stride(1), Hq,
                                 BLOCK_S=max(2, triton.next_power_of_2(splits)), DV=Dv, BLOCK_DV=block_dv,
                                 num_warps=4)
    return o
