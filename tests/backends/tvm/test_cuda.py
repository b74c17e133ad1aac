"""A ``--target cuda:sm_90`` build compiles here: TVM generates CUDA C and this machine's nvcc compiles it."""

import pytest

from lcc.backends.tvm import cuda_unavailable, tvm_target
from lcc.target import parse_target

pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'apache-tvm>=0.20'")


@pytest.mark.parametrize("target,want", [("cpu", "llvm"), ("cuda:sm_80", "cuda -arch=sm_80"),
                                         ("cuda:sm_90", "cuda -arch=sm_90")])
def test_the_tvm_target_follows_the_lcc_target(target, want):
    assert tvm_target(parse_target(target)) == want


def test_cuda_sm90_build_compiles_with_nvcc(tiny, tmp_path):
    why = cuda_unavailable()
    if why:
        pytest.skip(why)
    import json

    from lcc.backends.tvm import BACKEND
    from lcc.capture.export import capture
    from lcc.passes import canonicalize

    program = canonicalize(capture(tiny("llama"), capacity=32))
    lowered = BACKEND.lower(program, tmp_path, target="cuda:sm_90")
    manifest = json.loads((tmp_path / "tvm.json").read_text())
    assert list(manifest["libraries"]) == ["cuda -arch=sm_90"]  # the target's build only, no llvm
    assert (tmp_path / manifest["libraries"]["cuda -arch=sm_90"]).stat().st_size > 0
    kernels = manifest["cuda_kernels"]["cuda -arch=sm_90"]
    assert kernels, "the cuda build has no CUDA device code"
    for k in kernels:
        fatbin = (tmp_path / k["file"]).read_bytes()
        assert len(fatbin) == k["bytes"] > 0 and b"sm_90" in fatbin  # SASS for sm_90 from nvcc
        assert k["file"] in lowered.files
