"""The online-softmax step every attention kernel shares (Milakov & Gimelshein 2018; Dao et al. 2022, Alg. 1),
with the tile load and program coordinates the kernels share.

A row keeps a running maximum ``m_i``, a running sum ``l_i`` of ``2^(s - m_i)`` and an fp32
accumulator ``acc`` of those weights times V.  A new tile of scores ``qk`` (already times
``qk_scale = scale * log2 e``, masked pairs at -inf) rescales both by ``alpha = 2^(m_old - m_new)``
and adds its own terms, as in Triton's tutorial 06-fused-attention.  A row that has kept no
key yet stays at ``m_i = -inf`` and contributes nothing; :func:`normalize` gives it 0, as the
op's reference does, and :func:`log_sum_exp` gives it -inf, so a merge of partials ignores it.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(x) = 2^(x log2 e)


@triton.jit
def softmax_update(qk, v, m_i, l_i, acc, PREC: tl.constexpr):
    """(m_i, l_i, acc) after one tile: scores ``qk`` [M, N] (base 2, -inf where masked), values ``v`` [N, DV]."""
    m_ij = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_ij == float("-inf"), 0.0, m_ij)  # a row with nothing kept yet
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
    return m_ij, l_i, acc


@triton.jit
def normalize(acc, l_i):
    """The attention output ``acc / l_i``; rows that keep no key give 0."""
    return acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]


@triton.jit
def log_sum_exp(m_i, l_i):
    """Base-2 log-sum-exp of a row's scores, -inf for a row that keeps no key (a split's weight in the merge)."""
    return tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))


@triton.jit
def load_kv_tile(k_base, v_base, offs_n, kv_ok, stride_kn, stride_vn, offs_d, offs_dv,
                 D: tl.constexpr, DV: tl.constexpr, UPCAST: tl.constexpr):
    """K^T [BLOCK_D, N] and V [N, BLOCK_DV] of the keys ``offs_n`` (zeros where not ``kv_ok``)."""
    k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                mask=kv_ok[None, :] & (offs_d[:, None] < D), other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
                mask=kv_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    if UPCAST:  # Triton's interpreter multiplies bf16 raw bits in tl.dot; only the interpreter sets this
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit
def row_program(H, GROUP, BLOCK_M: tl.constexpr):
    """(query rows, batch, head, kv head) of a prefill program: grid (row blocks, batch * heads)."""
    pid_bh = tl.program_id(1)
    h = pid_bh % H
    return tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M), pid_bh // H, h, h // GROUP
