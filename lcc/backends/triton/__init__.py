"""The Triton backend: flash attention (block-sparse), flash decoding and linear attention kernels.

Importing this package never fails: without ``triton`` it only sets ``AVAILABLE = False``.
With it, the kernels register as ``lcc.attention``'s ``flash``/``decode``/``auto``
implementations on CUDA and as the ``triton`` lowerings of the ops.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - triton is Linux-only
    AVAILABLE = False
else:
    AVAILABLE = True

if AVAILABLE:
    from lcc.backends.triton import register  # noqa: F401  (plugs the kernels into the ops)
    from lcc.backends.triton.attention import flash_attention  # noqa: F401
    from lcc.backends.triton.decode import flash_decode  # noqa: F401
    from lcc.backends.triton import rerope  # noqa: F401  (ReRoPE's fused kernel on CUDA)
    from lcc.backends.triton import kv_decode  # noqa: F401  (the quantized-cache decode kernel; registers itself)
