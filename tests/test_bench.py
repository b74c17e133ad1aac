"""Benchmark scripts that need a GPU run to a clean skip without one (CI has none)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the benchmark")
def test_attention_benchmark_skips_cleanly_without_cuda():
    r = subprocess.run([sys.executable, "bench/attention.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "skipped: no CUDA\n"
    assert "Traceback" not in r.stderr
