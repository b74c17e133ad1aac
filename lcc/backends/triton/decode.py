"""Split-K flash decoding in Triton (Dao et al. 2023, "Flash-Decoding for long-context inference").

One query token per sequence against a long cache: the cache's kept range is cut into
``splits`` chunks, each program attends the group of query heads that share one kv head
(GQA without repeating K/V) to its chunk and writes a partial output plus its
log-sum-exp; a second kernel merges the partials.  Masks: causal, or sliding window with
sinks (the window and the sinks are two key ranges, so no tile is wasted on masked keys).
Gemma 2's soft-capping (``softcap`` > 0) caps the scaled scores as the flash kernel does.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from lcc.backends.triton.attention import cap_scores
from lcc.backends.triton.interpret import check_device, dot_precision, launcher, pow2, upcast, valid_lens
from lcc.backends.triton.online_softmax import LOG2E, load_kv_tile, log_sum_exp, normalize, softmax_update
from lcc.ops.masks import MaskSpec


@triton.jit
def attend_range(q, k_base, v_base, lo, hi, m_i, l_i, acc, stride_kn, stride_vn, qk_scale, softcap,
                 offs_d, offs_dv, D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                 UPCAST: tl.constexpr):
    """Online-softmax update of (m_i, l_i, acc) with keys lo..hi-1."""
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < hi
        k, v = load_kv_tile(k_base, v_base, offs_n, kv_ok, stride_kn, stride_vn, offs_d, offs_dv, D, DV, UPCAST)
        qk = tl.dot(q, k, input_precision=PREC) * qk_scale
        if softcap > 0:
            qk = cap_scores(qk, softcap)
        qk = tl.where(kv_ok[None, :], qk, float("-inf"))
        m_i, l_i, acc = softmax_update(qk, v, m_i, l_i, acc, PREC)
    return m_i, l_i, acc


@triton.jit
def split_program(HKV):
    """(split, batch, kv head) of a split-K decoding program: grid (splits, batch * kv heads)."""
    pid = tl.program_id(1)
    return tl.program_id(0), pid // HKV, pid % HKV


@triton.jit
def decode_split(Q, K, V, KV_LEN, MID_O, MID_LSE,
                 stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                 HKV, GROUP, SPLITS, window, sinks, qk_scale, softcap,
                 SLIDING: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                 D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 PREC: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert(BLOCK_D >= D)
    tl.static_assert(BLOCK_DV >= DV)
    split, b, hk = split_program(HKV)
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
            m_i, l_i, acc = attend_range(q, k_base, v_base, 0, tl.minimum(sinks, lo), m_i, l_i, acc,
                                         stride_kn, stride_vn, qk_scale, softcap, offs_d, offs_dv, D, DV, BLOCK_N,
                                         PREC, UPCAST)
    m_i, l_i, acc = attend_range(q, k_base, v_base, start, end, m_i, l_i, acc,
                                 stride_kn, stride_vn, qk_scale, softcap, offs_d, offs_dv, D, DV, BLOCK_N, PREC, UPCAST)
    row = (b * HKV * GROUP + heads) * SPLITS + split
    store_partial(MID_O, MID_LSE, row, offs_g < GROUP, offs_dv, m_i, l_i, acc, DV)


@triton.jit
def store_partial(MID_O, MID_LSE, row, row_ok, offs_dv, m_i, l_i, acc, DV: tl.constexpr):
    """A split's normalized partial output and its log-sum-exp, rows ``row`` of [B * H * SPLITS, DV]."""
    tl.store(MID_O + row[:, None] * DV + offs_dv[None, :], normalize(acc, l_i),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(MID_LSE + row, log_sum_exp(m_i, l_i), mask=row_ok)


@triton.jit
def decode_merge(MID_O, MID_LSE, O, SPLITS, stride_ob, stride_oh, H,
                 BLOCK_S: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr):
    """out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M): the softmax over all splits."""
    tl.static_assert(BLOCK_DV >= DV)
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


KERNELS = (decode_split, decode_merge)


def config(head_dim: int) -> dict:
    """Key tile and launch shape of the split kernels (the split count is :func:`num_splits`'s)."""
    return dict(block_n=64 if head_dim <= 128 else 32, num_warps=4, num_stages=2)


@functools.lru_cache(maxsize=None)
def sm_count(index) -> int:
    """Streaming multiprocessors of CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_splits(batch_kv_heads: int, k_len: int, block_n: int, device) -> int:
    """Enough programs to fill the GPU (about 4 per SM), each with at least 4 key blocks."""
    sms = sm_count(device.index) if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(4 * sms, batch_kv_heads), triton.cdiv(k_len, 4 * block_n), 256))


def flash_decode(q, k, v, kv_len=None, scale=None, mask="causal", splits=0, block_n=0, num_warps=0, num_stages=0,
                 softcap=0.0):
    """``lcc.attention`` for Sq == 1 with a causal or sliding mask, by split-K flash decoding (``softcap`` > 0:
    soft-capped scores).

    The one launcher of :func:`decode_split`, eager and inside ``triton_op`` (host side: torch ops on shapes).
    """
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    spec = MaskSpec.parse(mask)
    if Sq != 1 or spec.kind not in ("causal", "sliding") or Hq % Hkv:
        raise ValueError(f"flash_decode takes one query and a causal/sliding mask, got Sq={Sq}, {mask}")
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[3] != D:
        raise ValueError(f"flash_decode takes k [B, Hkv, Sk, D] and v [B, Hkv, Sk, Dv]; got {tuple(k.shape)}, "
                         f"{tuple(v.shape)} for q {tuple(q.shape)}")
    scale = D**-0.5 if scale is None else scale
    window, sinks = (spec.args["window"], spec.args["sinks"]) if spec.kind == "sliding" else (0, 0)
    lens = valid_lens(kv_len, B, Sk, q.device)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    group, cfg = Hq // Hkv, config(D)
    block_n = block_n or cfg["block_n"]
    span = min(Sk, window) if spec.kind == "sliding" else Sk
    splits = splits or num_splits(B * Hkv, span, block_n, q.device)
    mid_o = torch.empty(B, Hq, splits, Dv, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
    check_device(decode_split, q)
    launcher(decode_split)[(splits, B * Hkv)](
        q, k, v, lens, mid_o, mid_lse, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), Hkv, group, splits, window, sinks, scale * LOG2E,
        float(softcap) * LOG2E, SLIDING=spec.kind == "sliding", BLOCK_G=pow2(group), BLOCK_N=block_n, D=D, DV=Dv,
        BLOCK_D=pow2(D), BLOCK_DV=pow2(Dv), PREC=dot_precision(q.dtype), UPCAST=upcast(decode_split, q.dtype),
        num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"])
    return merge_splits(mid_o, mid_lse, q.new_empty(B, Hq, 1, Dv))


def merge_splits(mid_o, mid_lse, o):
    """The one launcher of :func:`decode_merge`: partials [B, H, S, DV] and their lse [B, H, S] into o [B, H, 1, DV]."""
    B, H, splits, Dv = mid_o.shape
    if mid_lse.shape != mid_o.shape[:3] or o.shape != (B, H, 1, Dv):
        raise ValueError(f"merge_splits takes [B, H, S, DV], [B, H, S] and [B, H, 1, DV]; got "
                         f"{tuple(mid_o.shape)}, {tuple(mid_lse.shape)}, {tuple(o.shape)}")
    launcher(decode_merge)[(B * H,)](mid_o, mid_lse, o, splits, o.stride(0), o.stride(1), H,
                                     BLOCK_S=max(2, triton.next_power_of_2(splits)), DV=Dv, BLOCK_DV=pow2(Dv),
                                     num_warps=4)
    return o
