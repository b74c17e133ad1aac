"""Flash attention forward in Triton (Dao et al. 2022; Dao 2023), block-sparse.

Tiled online softmax as in Triton's tutorial 06-fused-attention: one program owns
BLOCK_M query rows of one head and walks the key blocks its row of the block map keeps
(CSR: ``row_ptr``/``cols``, full tiles first, then partial ones), so fully masked tiles
are never loaded.  Full tiles need no mask; partial tiles evaluate the mask's own
predicate (:mod:`lcc.backends.triton.mask_mods`) plus ``kv < kv_len``.  Queries sit at
``kv_len - Sq + i``; GQA reads kv head ``h // group`` in place; accumulation is fp32.
Gemma 2's soft-capping (``softcap`` > 0) caps each tile's scaled scores before the mask.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from lcc.backends.triton.mask_mods import mask_launch_args
from lcc.backends.triton.interpret import check_device, dot_precision, launcher, pow2, tile_config, upcast
from lcc.backends.triton.online_softmax import LOG2E, load_kv_tile, normalize, row_program, softmax_update
from lcc.ops.masks import block_map


@triton.jit
def cap_scores(qk, cap):
    """``cap * tanh(qk / cap)`` (Gemma 2's soft-cap) on scores in log2 units: ``cap`` is the soft-cap times
    log2(e), as ``qk`` carries it; tanh as 1 - 2 / (e^2x + 1), exact at both saturations."""
    x = qk / cap
    return cap * (1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0))


@triton.jit
def attn_fwd(Q, K, V, O, KV_LEN, ROW_PTR, N_FULL, COLS,
             stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
             stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
             H, GROUP, SQ, ROWS_PER_BATCH, qk_scale, softcap, p0, p1, p2, p3,
             MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
             PREC: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert(BLOCK_D >= D)
    tl.static_assert(BLOCK_DV >= DV)
    offs_m, b, h, hk = row_program(H, GROUP, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=(offs_m[:, None] < SQ) & (offs_d[None, :] < D), other=0.0)
    if UPCAST:  # Triton's interpreter multiplies bf16 raw bits in tl.dot; only the interpreter sets this
        q = q.to(tl.float32)
    kv_len = tl.load(KV_LEN + b)
    q_pos = kv_len - SQ + offs_m
    row = b * ROWS_PER_BATCH + tl.program_id(0)
    start = tl.load(ROW_PTR + row)
    end = tl.load(ROW_PTR + row + 1)
    mid = start + tl.load(N_FULL + row)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # stage 1: tiles the mask keeps whole, all keys valid
    for idx in range(start, mid):
        offs_n = tl.load(COLS + idx) * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=offs_d[:, None] < D, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :], mask=offs_dv[None, :] < DV, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, k, input_precision=PREC) * qk_scale
        if softcap > 0:
            qk = cap_scores(qk, softcap)
        m_i, l_i, acc = softmax_update(qk, v, m_i, l_i, acc, PREC)
    # stage 2: partial tiles, the predicate evaluated pair by pair
    for idx in range(mid, end):
        offs_n = tl.load(COLS + idx) * BLOCK_N + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < kv_len
        k, v = load_kv_tile(k_base, v_base, offs_n, kv_ok, stride_kn, stride_vn, offs_d, offs_dv, D, DV, UPCAST)
        keep = MASK(q_pos[:, None], offs_n[None, :], p0, p1, p2, p3) & kv_ok[None, :]
        qk = tl.dot(q, k, input_precision=PREC) * qk_scale
        if softcap > 0:
            qk = cap_scores(qk, softcap)
        qk = tl.where(keep, qk, float("-inf"))
        m_i, l_i, acc = softmax_update(qk, v, m_i, l_i, acc, PREC)
    out = normalize(acc, l_i)  # rows that keep no key give 0, as the reference
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < SQ) & (offs_dv[None, :] < DV))


KERNELS = (attn_fwd,)


@functools.lru_cache(maxsize=64)
def _csr(mask: str, q_len: int, kv_len: int, block_m: int, block_n: int, device: str):
    """One kv_len's key-block lists: (row_ptr, n_full, cols), full tiles first in each row."""
    any_map, full_map = block_map(mask, q_len, kv_len, block_m, block_n, device)
    n_m, n_n = any_map.shape
    cols = torch.arange(n_n, device=device).expand(n_m, n_n)
    key = torch.where(any_map, cols + n_n * (~full_map).long(), 2 * n_n)
    order = key.argsort(dim=1, stable=True)
    counts = any_map.sum(1)
    kept = order[cols < counts[:, None]]
    row_ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    kept = kept if len(kept) else counts.new_zeros(1)  # never read; keeps the pointer valid
    return row_ptr.int(), full_map.sum(1).int(), kept.int()


def key_blocks(mask: str, q_len: int, kv_lens: list[int], block_m: int, block_n: int, device="cpu"):
    """CSR of the key blocks each query block visits: (row_ptr, n_full, cols, rows_per_batch).

    One list is shared by the batch when every kv_len is the same (rows_per_batch = 0);
    otherwise batch b's rows start at b * cdiv(q_len, block_m).
    """
    device = str(device)
    lens = kv_lens[:1] if len(set(kv_lens)) == 1 else kv_lens
    parts = [_csr(mask, q_len, n, block_m, block_n, device) for n in lens]
    if len(parts) == 1:
        return (*parts[0], 0)
    row_ptr, offset = [parts[0][0][:1]], 0
    for rp, _, cols in parts:
        row_ptr.append(rp[1:] + offset)
        offset += int(rp[-1])
    cols = torch.cat([c[: int(rp[-1])] for rp, _, c in parts] + [parts[0][2][:1]])  # + one never-read pad
    return torch.cat(row_ptr), torch.cat([p[1] for p in parts]), cols, -(-q_len // block_m)


def config(head_dim: int, dtype: torch.dtype, q_len: int) -> dict:
    """Block sizes and launch shape (H100/A100-sized defaults; small q_len shrinks BLOCK_M)."""
    return tile_config(head_dim, dtype, q_len, {64: (128, 64, 4, 3), 128: (128, 64, 8, 3), None: (64, 32, 8, 2)})


@functools.lru_cache(maxsize=64)
def _lens_tensor(lens: tuple, device: str) -> torch.Tensor:
    return torch.tensor(lens, dtype=torch.int32, device=device)


def kv_lens(kv_len, batch: int, k_len: int) -> list[int]:
    """kv_len (None, a 0-d or [B] tensor) as B host integers."""
    if kv_len is None:
        return [k_len] * batch
    values = kv_len.reshape(-1).tolist()
    return values * batch if len(values) == 1 else values


def flash_attention(q, k, v, kv_len=None, scale=None, mask="causal", block_m=0, block_n=0,
                    num_warps=0, num_stages=0, softcap=0.0):
    """``lcc.attention`` by the Triton kernel, eagerly: CUDA tensors compiled, CPU tensors interpreted.

    Reads ``kv_len`` on the host to check it and to build the exact key-block lists of any mask
    (:func:`key_blocks`, cached); :func:`flash_launch` runs the kernel.
    """
    B, Sq, D, Sk = q.shape[0], q.shape[2], q.shape[3], k.shape[2]
    lens = kv_lens(kv_len, B, Sk)
    if min(lens) < Sq or max(lens) > Sk:
        raise ValueError(f"kv_len must lie in [Sq, Sk] = [{Sq}, {Sk}], got {lens}")
    cfg = config(D, q.dtype, Sq)
    cfg.update({key: val for key, val in dict(block_m=block_m, block_n=block_n, num_warps=num_warps,
                                              num_stages=num_stages).items() if val})
    blocks = key_blocks(mask, Sq, lens, cfg["block_m"], cfg["block_n"], q.device)
    return flash_launch(q, k, v, _lens_tensor(tuple(lens), str(q.device)), blocks, scale, mask, cfg, softcap)


def flash_launch(q, k, v, lens, blocks, scale, mask: str, cfg: dict, softcap: float = 0.0) -> torch.Tensor:
    """The one launcher of :func:`attn_fwd`, eager and inside ``triton_op`` (host side: torch ops on shapes).

    ``lens`` [B] int32 valid keys per sequence; ``blocks`` = (row_ptr, n_full, cols, rows_per_batch) as
    :func:`key_blocks` builds them; ``cfg`` as :func:`config` returns it; ``softcap`` > 0 soft-caps the scores.
    """
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[3] != D or Hq % Hkv:
        raise ValueError(f"flash attention takes q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv] "
                         f"with Hq % Hkv == 0; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    scale = D**-0.5 if scale is None else scale
    row_ptr, n_full, cols, rows_per_batch = blocks
    bm, bn = cfg["block_m"], cfg["block_n"]
    mask_fn, params = mask_launch_args(mask)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    o = q.new_empty(B, Hq, Sq, Dv)
    check_device(attn_fwd, q)
    launcher(attn_fwd)[(triton.cdiv(Sq, bm), B * Hq)](
        q, k, v, o, lens, row_ptr, n_full, cols,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        Hq, Hq // Hkv, Sq, rows_per_batch, scale * LOG2E, float(softcap) * LOG2E, *params,
        MASK=mask_fn, BLOCK_M=bm, BLOCK_N=bn, D=D, DV=Dv, BLOCK_D=pow2(D), BLOCK_DV=pow2(Dv),
        PREC=dot_precision(q.dtype), UPCAST=upcast(attn_fwd, q.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o


__all__ = ["flash_attention", "flash_launch", "key_blocks", "config", "kv_lens", "attn_fwd", "cap_scores", "KERNELS"]
