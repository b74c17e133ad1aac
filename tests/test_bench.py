"""Benchmark scripts that need a GPU run to a clean skip without one (CI has none)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the benchmark")
@pytest.mark.parametrize("script", ["bench/attention.py", "bench/kv_decode.py"])
def test_attention_benchmark_skips_cleanly_without_cuda(script):
    r = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "skipped: no CUDA\n"
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the benchmark")
def test_gpu_script_skips_cleanly_without_cuda(tmp_path):
    r = subprocess.run([sys.executable, "bench/gpu.py", "run", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout == "skipped: no CUDA\n", r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []


def test_gpu_script_sections_name_existing_scripts():
    r = subprocess.run([sys.executable, "bench/gpu.py", "list"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    scripts = {line.split()[4] for line in r.stdout.splitlines() if "(pending" not in line}
    assert scripts and all((ROOT / s).is_file() for s in scripts)
    assert {"attention", "triton-e2e", "rope-128k"} <= {line.split()[0] for line in r.stdout.splitlines()}
