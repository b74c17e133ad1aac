"""Where a kernel can run: compiled on CUDA, or in Triton's interpreter on CPU tensors.

``triton.jit`` decides between the two once, at import, from ``TRITON_INTERPRET=1``
(which must be set before ``triton`` itself is imported, since triton's own
``tl.sum``/``tl.max`` are jitted too).  The two modes never mix in one process.
"""

from __future__ import annotations


def is_interpreted(kernel) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


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
    import torch

    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
