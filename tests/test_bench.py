"""Benchmark scripts that need a GPU: a clean skip without one (CI has none), and their CPU-reachable parts
(lcc imports, FlexAttention masks, quantized caches) checked against lcc's current API."""

import ast
import importlib
import importlib.util
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


def _bench_module(name):
    """A bench script imported as a module (its sibling imports resolve as when it runs)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_bench_scripts_import_only_lcc_names_that_exist(script):
    """Every ``from lcc... import name`` in a bench script (function bodies included, which only run on a GPU)
    resolves, so renaming something in lcc breaks this test rather than a lent GPU's run."""
    tree = ast.parse((ROOT / "bench" / script).read_text())
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "lcc":
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name} (line {node.lineno})" for a in node.names
                        if not hasattr(module, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lcc" and importlib.util.find_spec(a.name) is None:
                    missing.append(f"{a.name} (line {node.lineno})")
    assert not missing, f"{script} imports names lcc no longer has: {missing}"


@pytest.mark.parametrize("mask", ["causal", "sliding:window=300,sinks=0", *_bench_module("attention").PATTERNS])
def test_attention_bench_flex_masks_match_lcc_masks(mask):
    """The FlexAttention baselines' block masks (built on CPU here, by FlexAttention itself from the bench's
    ``mask_mod``) keep exactly the 128 x 128 blocks where lcc's dense mask keeps a pair."""
    from torch.nn.attention.flex_attention import create_block_mask

    from lcc.ops.masks import dense_mask, mask_pairs

    bench, L = _bench_module("attention"), 2048
    block_mask = create_block_mask(bench.flex_mask_mod(mask), None, None, L, L, device="cpu", _compile=False)
    want = dense_mask(mask, L, L).reshape(L // 128, 128, L // 128, 128).any(3).any(1)
    assert torch.equal(block_mask.to_dense()[0, 0].bool(), want)
    assert int(mask_pairs(mask, L, L)) >= int(dense_mask(mask, L, L).sum()) > 0  # the FLOP count's pairs


def test_kv_decode_bench_builds_caches_the_reference_reads():
    """bench/kv_decode.py's random quantized parts fit the current format API: the reference decodes them to
    finite values (fp8 codes avoid the NaN bytes)."""
    from lcc.ops.kv_cache import KVQuantFormat, attention_kvq_reference

    bench = _bench_module("kv_decode")
    q = torch.randn(bench.B, bench.H, 1, bench.D)
    for spec in bench.FORMATS:
        fmt = KVQuantFormat.parse(spec)
        kp, vp = (bench.random_parts(fmt, which, 256, device="cpu") for which in ("k", "v"))
        out = attention_kvq_reference(q, kp, vp, torch.tensor(200), bench.D**-0.5, "causal", fmt)
        assert out.shape == q.shape and torch.isfinite(out).all(), spec


def test_kv_decode_bench_checks_each_format_against_the_reference_before_timing_it():
    """The kernel's output on the bench's own parts is within TOL of the reference (here the interpreter; on a GPU
    the compiled path), and a format out of tolerance is reported WRONG with no speed ratio."""
    from lcc.ops.kv_cache import KVQuantFormat

    bench = _bench_module("kv_decode")
    torch.manual_seed(0)
    q = torch.randn(bench.B, bench.H, 1, bench.D, dtype=torch.bfloat16)
    for spec in bench.FORMATS:
        fmt = KVQuantFormat.parse(spec)
        kp, vp = (bench.random_parts(fmt, which, 256, device="cpu") for which in ("k", "v"))
        assert bench.max_error(q, kp, vp, torch.tensor(200), fmt) < bench.TOL, spec  # bf16 rounding: ~4e-3
    measured = [(32768, "bf16", 0.05, 0.5, 1 << 27, None, None),
                (32768, "int8", 0.02, 0.5, 1 << 26, None, 0.3)]  # as rows() leaves a wrong kernel: no ratio
    text = bench.verdicts(measured)
    assert "int8 at 32k: WRONG" in text and "lower latency" not in text
    assert "WRONG" in bench.table(measured).splitlines()[-1]
