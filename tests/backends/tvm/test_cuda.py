"""The cuda -arch=sm_90 build compiles here: TVM generates CUDA C and this machine's nvcc compiles it."""

import pytest

from lcc.backends.tvm import CUDA_TARGET, cuda_unavailable

pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'apache-tvm>=0.20'")


def test_cuda_sm90_build_compiles_with_nvcc(tiny, tmp_path):
    why = cuda_unavailable()
    if why:
        pytest.skip(why)
    from lcc.backends.tvm import lower
    from lcc.capture.export import capture
    from lcc.passes import canonicalize

    program = canonicalize(capture(tiny("llama"), capacity=32))
    manifest = lower(program, tmp_path, target=CUDA_TARGET)
    assert (tmp_path / manifest["libraries"][CUDA_TARGET]).stat().st_size > 0
    kernels = manifest["cuda_kernels"][CUDA_TARGET]
    assert kernels, "the cuda build has no CUDA device code"
    for k in kernels:
        fatbin = (tmp_path / k["file"]).read_bytes()
        assert len(fatbin) == k["bytes"] > 0 and b"sm_90" in fatbin  # SASS for sm_90 from nvcc
