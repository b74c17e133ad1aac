"""The lcc ops as ``torch.library.triton_op``: what Inductor traces into when it compiles a program.

``lcc_triton::attention`` launches the flash-attention kernel (any mask with a Triton
predicate, key blocks skipped) or split-K flash decoding (one query, causal/sliding mask)
through ``wrap_triton``, so Inductor sees the kernels and AOTInductor compiles them into
its package.  The host side is torch ops on shapes and device tensors (the key-block lists
are built with ``searchsorted``, never with ``.tolist()``), so the body traces with a
symbolic sequence length.  Triton kernels run on CUDA only; on any other device the body is
the op's reference implementation (also the registered CPU kernel), which Inductor compiles
to C++.  ``lcc_triton::rope`` has no kernel of its own: its body is the reference, which
Inductor fuses with its neighbours.
"""

from __future__ import annotations

import torch
import triton
from torch.library import triton_op, wrap_triton

from lcc.backends.triton.attention import LOG2E, _attn_fwd
from lcc.backends.triton.attention import config as flash_config
from lcc.backends.triton.decode import _decode_merge, _decode_split, default_block_n, num_splits
from lcc.backends.triton.interpret import is_interpreted
from lcc.backends.triton.mask_mods import mask_launch_args
from lcc.ops.attention import attention_reference
from lcc.ops.masks import MaskSpec
from lcc.ops.rope import rope_reference

NAMESPACE = "lcc_triton"


def key_block_lists(mask: str, q_len, k_len, lens: torch.Tensor, block_m: int, block_n: int):
    """CSR of the key blocks each (batch, query block) row visits: (row_ptr, n_full, cols).

    Built from torch ops so that ``q_len``/``k_len`` may be symbolic.  A row visits the blocks
    ``[0, first)`` then ``[base, hi)``; its first ``n_full`` are tiles the mask keeps whole
    (causal and full masks; the kernel skips the predicate there).  Sliding windows visit the
    sink blocks and the window's blocks; other masks every block below ``kv_len`` (their
    predicate decides).  ``cols`` has room for every block of every row; the tail is never read.
    """
    spec = MaskSpec.parse(mask)
    n_m, n_n = triton.cdiv(q_len, block_m), triton.cdiv(k_len, block_n)
    n = lens.long()[:, None]  # [B, 1] valid keys
    q_first = n - q_len + torch.arange(n_m, device=lens.device) * block_m  # [B, n_m]
    q_last = torch.minimum(q_first + block_m - 1, n - 1)
    zero = torch.zeros_like(q_first)
    if spec.kind in ("causal", "sliding"):
        hi = (q_last + block_n) // block_n
    else:
        hi = ((n + block_n - 1) // block_n).expand_as(q_first)
    first, base, n_full = hi, hi, zero
    if spec.kind == "causal":
        n_full = torch.minimum(q_first + 1, n) // block_n
    elif spec.kind == "full":
        n_full = (n // block_n).expand_as(q_first)
    elif spec.kind == "sliding":
        sink_blocks = triton.cdiv(spec.args["sinks"], block_n)
        lo = torch.clamp(q_first - spec.args["window"] + 1, min=0) // block_n
        first = torch.clamp(hi, max=sink_blocks)
        base = torch.clamp(lo, min=sink_blocks)
    first, base, n_full = first.reshape(-1), base.reshape(-1), n_full.reshape(-1)
    count = first + torch.clamp(hi.reshape(-1) - base, min=0)
    row_ptr = torch.cat([count.new_zeros(1), count.cumsum(0)])
    idx = torch.arange(count.shape[0] * n_n, device=lens.device)
    row = torch.searchsorted(row_ptr[1:-1], idx, right=True)  # in [0, rows)
    local = idx - row_ptr[row]
    cols = torch.where(local < first[row], local, local - first[row] + base[row])
    return row_ptr.int(), n_full.int(), cols.int()


def _valid_lens(kv_len, batch: int, k_len, device) -> torch.Tensor:
    if kv_len is None:
        return torch.full((batch,), k_len, dtype=torch.int32, device=device)
    return kv_len.to(device=device, dtype=torch.int32).reshape(-1).expand(batch).contiguous()


def flash_prefill(q, k, v, kv_len, scale: float, mask: str) -> torch.Tensor:
    """The flash kernel over key-block lists built on the device (traceable launcher)."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    cfg = flash_config(D, q.dtype, 1 << 30)  # the sequence length may be symbolic: full-size blocks
    bm, bn = cfg["block_m"], cfg["block_n"]
    lens = _valid_lens(kv_len, B, Sk, q.device)
    row_ptr, n_full, cols = key_block_lists(mask, Sq, Sk, lens, bm, bn)
    mask_id, params = mask_launch_args(mask)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    o = q.new_empty(B, Hq, Sq, Dv)
    launch = _attn_fwd if is_interpreted(_attn_fwd) else wrap_triton(_attn_fwd)
    launch[(triton.cdiv(Sq, bm), B * Hq)](
        q, k, v, o, lens, row_ptr, n_full, cols,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        Hq, Hq // Hkv, Sq, triton.cdiv(Sq, bm), scale * LOG2E, *params,
        MASK=mask_id, BLOCK_M=bm, BLOCK_N=bn, D=D, DV=Dv,
        BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(Dv)),
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=is_interpreted(_attn_fwd) and q.dtype == torch.bfloat16,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o


def flash_decode(q, k, v, kv_len, scale: float, mask: str) -> torch.Tensor:
    """Split-K flash decoding for one query (traceable launcher of the decode kernels)."""
    B, Hq, _, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    spec = MaskSpec.parse(mask)
    window, sinks = (spec.args["window"], spec.args["sinks"]) if spec.kind == "sliding" else (0, 0)
    lens = _valid_lens(kv_len, B, Sk, q.device)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    group, block_n = Hq // Hkv, default_block_n(D)
    splits = num_splits(B * Hkv, min(Sk, window) if spec.kind == "sliding" else Sk, block_n, q.device)
    mid_o = torch.empty(B, Hq, splits, Dv, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
    o = q.new_empty(B, Hq, 1, Dv)
    block_dv = max(16, triton.next_power_of_2(Dv))
    split = _decode_split if is_interpreted(_decode_split) else wrap_triton(_decode_split)
    split[(splits, B * Hkv)](
        q, k, v, lens, mid_o, mid_lse, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), Hkv, group, splits, window, sinks, scale * LOG2E,
        SLIDING=spec.kind == "sliding", BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, D=D, DV=Dv,
        BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=block_dv,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=is_interpreted(_decode_split) and q.dtype == torch.bfloat16, num_warps=4, num_stages=2)
    merge = _decode_merge if is_interpreted(_decode_merge) else wrap_triton(_decode_merge)
    merge[(B * Hq,)](mid_o, mid_lse, o, splits, o.stride(0), o.stride(1), Hq,
                     BLOCK_S=max(2, triton.next_power_of_2(splits)), DV=Dv, BLOCK_DV=block_dv, num_warps=4)
    return o


def attention_kernels(q, k, v, kv_len, scale: float, mask: str) -> torch.Tensor:
    """Which kernel serves a call: flash decoding for one query under a causal/sliding mask, flash otherwise."""
    if q.shape[2] == 1 and MaskSpec.parse(mask).kind in ("causal", "sliding"):
        return flash_decode(q, k, v, kv_len, scale, mask)
    return flash_prefill(q, k, v, kv_len, scale, mask)


@triton_op(f"{NAMESPACE}::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None, scale: float,
              mask: str = "causal", algo: str = "auto") -> torch.Tensor:
    if q.device.type != "cuda":
        return attention_reference(q, k, v, kv_len, scale, mask)
    return attention_kernels(q, k, v, kv_len, scale, mask)


@attention.register_kernel("cpu")
def _(q, k, v, kv_len, scale, mask="causal", algo="auto"):
    return attention_reference(q, k, v, kv_len, scale, mask)


@triton_op(f"{NAMESPACE}::rope", mutates_args=())
def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0,
         variant: str = "") -> torch.Tensor:
    return rope_reference(x, positions, inv_freq, attention_scaling, variant)


# lcc op -> (its triton_op, how the compiled program implements it)
TRITON_OPS = {
    torch.ops.lcc.attention.default: (torch.ops.lcc_triton.attention.default,
                                      "triton_op: flash attention (block-skipping) / split-K flash decoding "
                                      "on CUDA; reference on CPU"),
    torch.ops.lcc.rope.default: (torch.ops.lcc_triton.rope.default, "triton_op: reference body, fused by Inductor"),
}
