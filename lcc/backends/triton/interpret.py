"""How a Triton kernel is launched: compiled on CUDA or interpreted on CPU, and with which dot precision.

``triton.jit`` decides between the two modes once, at import, from ``TRITON_INTERPRET=1``
(which must be set before ``triton`` itself is imported, since triton's own
``tl.sum``/``tl.max`` are jitted too).  The two modes never mix in one process.  Every
launcher goes through :func:`launcher` (``wrap_triton`` when compiled, so the same launcher
traces inside a ``torch.library.triton_op``) and takes ``PREC`` from :func:`dot_precision` only.
"""

from __future__ import annotations

import torch


def is_interpreted(kernel) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


def launcher(kernel):
    """``kernel`` ready to index with a grid: ``wrap_triton`` when compiled (traceable), itself when interpreted."""
    if is_interpreted(kernel):
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(kernel)


def check_device(kernel, tensor) -> None:
    """Raise a clear error where ``kernel`` cannot run on ``tensor``'s device."""
    if is_interpreted(kernel):
        if tensor.device.type != "cpu":
            raise RuntimeError("TRITON_INTERPRET=1 is set: Triton kernels take CPU tensors only")
    elif tensor.device.type != "cuda":
        raise RuntimeError("Triton kernels need CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                           "before triton is imported")


def dot_precision(dtype) -> str:
    """``tl.dot``'s input precision: fp32 inputs follow PyTorch's TF32 switch, as cuBLAS does.

    ``torch.backends.cuda.matmul.allow_tf32`` (off by default) lets fp32 products round their
    inputs to TF32 on tensor cores; otherwise fp32 stays IEEE.  Other dtypes use tensor cores
    natively (the value is then ignored).
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def pow2(n: int) -> int:
    """A tile edge for n elements: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    import triton

    return max(16, triton.next_power_of_2(n))


def upcast(kernel, dtype) -> bool:
    """The kernels' ``UPCAST``: Triton's interpreter multiplies bf16 raw bits in ``tl.dot``, so it gets fp32."""
    return is_interpreted(kernel) and dtype == torch.bfloat16


def valid_lens(kv_len, batch: int, k_len, device) -> torch.Tensor:
    """``kv_len`` (None, a 0-d or [B] tensor) as a [B] int32 device tensor, with torch ops only (traceable)."""
    if kv_len is None:
        return torch.full((batch,), k_len, dtype=torch.int32, device=device)
    return kv_len.to(device=device, dtype=torch.int32).reshape(-1).expand(batch).contiguous()


def tile_config(head_dim: int, dtype, q_len: int, tiles: dict) -> dict:
    """Launch config from ``tiles``: {max head dim (None: any): (block_m, block_n, num_warps, num_stages)}.

    fp32 halves ``block_n`` (twice the bytes per key); ``block_m`` shrinks to a short ``q_len``.
    """
    bound = min((b for b in tiles if b is not None and head_dim <= b), default=None)
    block_m, block_n, num_warps, num_stages = tiles[bound]
    if dtype == torch.float32:
        block_n = max(16, block_n // 2)
    block_m = max(16, min(block_m, pow2(q_len)))
    return dict(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
