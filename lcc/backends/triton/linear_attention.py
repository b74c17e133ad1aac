"""Causal linear attention in Triton, chunked form (Katharopoulos et al. 2020; Yang et al. 2024, GLA Sec. 2.2).

The sequence is cut into chunks of C tokens.  Within a chunk the masked C x C kernel
matrix ``a = tril(phi_q phi_k^T)`` is applied directly; earlier chunks enter through the
running state ``state = sum phi_k^T v`` [F, Dv] and normalizer ``z = sum phi_k`` [F],
both fp32.  Feature maps are applied first, by the op's own :func:`features`, so the
kernel and the reference share them; one program per (batch, head, Dv block).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lcc.backends.triton.interpret import check_device, dot_precision, launcher, pow2
from lcc.ops.linear_attention import features


@triton.jit
def linear_attn_fwd(PQ, PK, V, O, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                    stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os,
                    H, GROUP, S, eps, F: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr,
                    BLOCK_F: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr):
    tl.static_assert(BLOCK_F >= F)
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    hk = h // GROUP
    offs_c = tl.arange(0, CHUNK)
    offs_f = tl.arange(0, BLOCK_F)
    offs_dv = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    pq_base = PQ + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    pk_base = PK + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    causal = offs_c[:, None] >= offs_c[None, :]

    state = tl.zeros([BLOCK_F, BLOCK_DV], dtype=tl.float32)
    z = tl.zeros([BLOCK_F], dtype=tl.float32)
    for start in range(0, S, CHUNK):
        rows = start + offs_c
        row_ok = rows < S
        phi_q = tl.load(pq_base + rows[:, None] * stride_qs + offs_f[None, :],
                        mask=row_ok[:, None] & (offs_f[None, :] < F), other=0.0)
        phi_k = tl.load(pk_base + rows[:, None] * stride_ks + offs_f[None, :],
                        mask=row_ok[:, None] & (offs_f[None, :] < F), other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vs + offs_dv[None, :],
                    mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0).to(tl.float32)
        a = tl.dot(phi_q, tl.trans(phi_k), input_precision=PREC)
        a = tl.where(causal, a, 0.0)
        num = tl.dot(a, v, input_precision=PREC) + tl.dot(phi_q, state, input_precision=PREC)
        den = tl.sum(a, 1) + tl.sum(phi_q * z[None, :], 1)
        out = num / (den + eps)[:, None]
        tl.store(o_base + rows[:, None] * stride_os + offs_dv[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV))
        state = tl.dot(tl.trans(phi_k), v, state, input_precision=PREC)
        z = z + tl.sum(phi_k, 0)


KERNELS = (linear_attn_fwd,)


def config(num_features: int, dv: int) -> dict:
    """Chunk length, tile sizes and launch shape: the fp32 state [block_f, block_dv] stays in registers."""
    block_f = pow2(num_features)
    return dict(block_f=block_f, chunk=64 if block_f <= 128 else 32,
                block_dv=min(64 if block_f <= 128 else 32, pow2(dv)), num_warps=4, num_stages=2)


def linear_attention(q, k, v, feature_map="elu", projection=None, eps=1e-6, chunk=0, block_dv=0):
    """``lcc.linear_attention`` by the chunked Triton kernel (CUDA compiled, CPU interpreted); its one launcher."""
    B, Hq, S, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    if Hq % Hkv or k.shape[2] != S:
        raise ValueError("linear_attention needs Hq % Hkv == 0 and as many keys as queries")
    phi_q = features(q, feature_map, projection, True).contiguous()
    phi_k = features(k, feature_map, projection, False).contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    F = phi_q.shape[-1]
    cfg = config(F, Dv)
    chunk, block_dv = chunk or cfg["chunk"], block_dv or cfg["block_dv"]
    o = q.new_empty(B, Hq, S, Dv)
    check_device(linear_attn_fwd, q)
    launcher(linear_attn_fwd)[(B * Hq, triton.cdiv(Dv, block_dv))](
        phi_q, phi_k, v, o, phi_q.stride(0), phi_q.stride(1), phi_q.stride(2),
        phi_k.stride(0), phi_k.stride(1), phi_k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2), Hq, Hq // Hkv, S, eps,
        F=F, DV=Dv, CHUNK=chunk, BLOCK_F=cfg["block_f"], BLOCK_DV=block_dv,
        PREC=dot_precision(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o
