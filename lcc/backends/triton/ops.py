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
from torch.library import triton_op

from lcc.backends.triton.attention import config as flash_config
from lcc.backends.triton.attention import flash_launch
from lcc.backends.triton.decode import flash_decode
from lcc.backends.triton.interpret import valid_lens
from lcc.ops import registry
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


def flash_prefill(q, k, v, kv_len, scale: float, mask: str, softcap: float = 0.0) -> torch.Tensor:
    """The flash kernel over key-block lists built on the device (the sequence length may be symbolic)."""
    cfg = flash_config(q.shape[3], q.dtype, 1 << 30)  # full-size blocks: q_len may be symbolic
    lens = valid_lens(kv_len, q.shape[0], k.shape[2], q.device)
    blocks = key_block_lists(mask, q.shape[2], k.shape[2], lens, cfg["block_m"], cfg["block_n"])
    return flash_launch(q, k, v, lens, (*blocks, triton.cdiv(q.shape[2], cfg["block_m"])), scale, mask, cfg, softcap)


def attention_kernels(q, k, v, kv_len, scale: float, mask: str, softcap: float = 0.0) -> torch.Tensor:
    """Which kernel serves a call: flash decoding for one query under a causal/sliding mask, flash otherwise."""
    if q.shape[2] == 1 and MaskSpec.parse(mask).kind in ("causal", "sliding"):
        return flash_decode(q, k, v, kv_len, scale, mask, softcap=softcap)
    return flash_prefill(q, k, v, kv_len, scale, mask, softcap)


@triton_op(f"{NAMESPACE}::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None, scale: float,
              mask: str = "causal", algo: str = "auto", softcap: float = 0.0) -> torch.Tensor:
    if q.device.type != "cuda":
        return attention_reference(q, k, v, kv_len, scale, mask, softcap)
    return attention_kernels(q, k, v, kv_len, scale, mask, softcap)


@attention.register_kernel("cpu")
def _(q, k, v, kv_len, scale, mask="causal", algo="auto", softcap=0.0):
    return attention_reference(q, k, v, kv_len, scale, mask, softcap)


@triton_op(f"{NAMESPACE}::rope", mutates_args=())
def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0,
         variant: str = "") -> torch.Tensor:
    return rope_reference(x, positions, inv_freq, attention_scaling, variant)


def _retarget_to(triton_op, how: str):
    """A lowering's ``prepare``: point the lcc node at its triton_op (same schema) and say how it runs."""
    def prepare(node, args, context=None) -> str:
        node.target = triton_op
        return how

    return prepare


def _lowering(triton_op, how: str) -> registry.Lowering:
    return registry.Lowering(emit=triton_op, how=how, prepare=_retarget_to(triton_op, how))


# each lcc op with a triton_op: the ``triton`` lowering that compiles it into the package
registry.register_lowering("attention", "triton", _lowering(
    torch.ops.lcc_triton.attention.default,
    "triton_op: flash attention (block-skipping) / split-K flash decoding on CUDA; reference on CPU"))
registry.register_lowering("rope", "triton", _lowering(
    torch.ops.lcc_triton.rope.default, "triton_op: reference body, fused by Inductor"))
