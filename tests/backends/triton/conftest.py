"""Run the Triton kernels in Triton's interpreter on CPU, or compiled where CUDA is present.

TRITON_INTERPRET=1 only takes effect if it is set before ``triton`` is imported (triton's
own ``tl.sum``/``tl.max`` are jitted at import), so it is set here, at collection; if
something imported triton earlier in this process the kernel tests skip with the reason.
"""

import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"


def _kernels_ready() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    from lcc.backends.triton.attention import attn_fwd
    from lcc.backends.triton.interpret import is_interpreted

    if CUDA or is_interpreted(attn_fwd):
        return None
    return "no CUDA, and triton was imported before TRITON_INTERPRET=1 could be set; run this directory alone"


@pytest.fixture(scope="session")
def device():
    """Where the kernels run here: 'cuda' (compiled) or 'cpu' (interpreted); skips when neither works."""
    reason = _kernels_ready()
    if reason:
        pytest.skip(reason)
    return "cuda" if CUDA else "cpu"


@pytest.fixture(scope="session")
def compiled_tiny_llama(tiny, tmp_path_factory):
    """(loaded, CompileResult) of ``lcc compile tiny-llama --target-len 64 --backend triton``, built once: an
    AOTInductor build is a minute or more of C++ per entry on a 2-core machine, and the artifact tests and the
    end-to-end test read the same artifact."""
    from lcc.compile import compile_model

    loaded = tiny("llama")
    return loaded, compile_model(loaded, 64, "triton", [], tmp_path_factory.mktemp("triton-compiled") / "a")
