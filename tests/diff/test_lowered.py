"""``lcc diff --backend B``: the last stage lowered by a backend, reported against HF eager and that stage."""

import json

import pytest
import torch

from lcc.diff import diff
from tests.test_cli import lcc

SINKS = "sliding-window:window=8,sinks=2"  # approximate: far from HF eager, so the lowered stage must follow it


def _lowered_follows_last_pass(reports, backend):
    by_name = {r.name: r for r in reports}
    last, lowered = reports[-2], reports[-1]
    assert last.name.startswith("sliding-window") and not last.exact, [r.name for r in reports]
    assert lowered.name == f"lowered:{backend}" and lowered.exact and lowered.ok
    assert lowered.vs_prev_max_abs <= lowered.limit  # the lowered program computes the pass stage's logits
    assert lowered.max_abs > 1e-3 and abs(lowered.max_abs - last.max_abs) <= lowered.limit  # ... not HF eager's
    assert by_name["canonical"].ok and by_name["canonical"].max_abs <= by_name["canonical"].limit


@pytest.mark.parametrize("backend", ["onnx", "tvm"])
def test_lowered_stage_matches_the_last_pass(tiny, backend):
    pytest.importorskip({"onnx": "onnxruntime", "tvm": "tvm"}[backend])
    reports = diff(tiny("llama"), [SINKS], length=24, backend=backend)
    _lowered_follows_last_pass(reports, backend)


@pytest.mark.slow
def test_lowered_triton_stage_matches_the_last_pass(tiny):
    """AOTInductor package of the entry (Triton kernels on CUDA; the ops' bodies compiled to C++ on CPU)."""
    pytest.importorskip("triton")
    reports = diff(tiny("llama"), [SINKS], length=24, backend="triton")
    _lowered_follows_last_pass(reports, "triton")


def test_cli_diff_backend_json():
    pytest.importorskip("onnxruntime")
    r = lcc("diff", "tiny-qwen2", "--len", "40", "--backend", "onnx", "--json")
    assert r.returncode == 0, r.stderr
    stages = json.loads(r.stdout)["stages"]
    assert [s["name"] for s in stages] == ["hf-eager", "captured", "canonical", "lowered:onnx"]
    lowered = stages[-1]
    assert lowered["ok"] and lowered["max_abs"] <= lowered["limit"] and lowered["top1"] == 1.0
    assert lowered["first_divergent_layer"] is None


def test_cli_diff_unknown_backend_is_a_usage_error():
    r = lcc("diff", "tiny-llama", "--backend", "webgpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend webgpu" in lines[0] and "onnx" in lines[0], r.stderr


def test_captured_tolerance_scales_with_the_logits():
    """Captured/canonical vs HF eager: 1e-4 + 1e-5 * max|logits| (fp32 reassociation), not a bare 1e-4."""
    from lcc.diff import Outputs, compare

    ref = Outputs(torch.full((4, 8), 40.0), torch.zeros(2, 4, 3))

    def shifted(d):
        logits = ref.logits.clone()
        logits[0, 0] += d
        return Outputs(logits, ref.hidden)

    assert compare(ref, shifted(4e-4), "captured", True).ok  # limit 1e-4 + 4e-4
    assert not compare(ref, shifted(6e-4), "captured", True).ok
