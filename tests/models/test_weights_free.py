"""Weights-free models: a config-only directory of Llama-3-8B's shapes is inspected, costed and planned
without materialising its 16 GB (bf16) of weights."""

import json
import subprocess
import sys

import pytest
from torch._subclasses.fake_tensor import FakeTensor

from lcc.errors import UsageError
from lcc.models import load_model

LLAMA3_8B_PARAMS = 8_030_261_248  # Meta's published parameter count of Llama-3-8B
KV_PER_TOKEN_BF16 = 32 * 2 * 8 * 128 * 2  # layers x (K, V) x kv heads x head dim x 2 bytes = 128 KiB
RSS_LIMIT = 2 * 1024**3  # far below the 16 GB the weights would take in bf16


def _lcc_with_peak_rss(*args, timeout=600):
    """Run ``python -m lcc ARGS``; (completed process, peak RSS in bytes of that process).

    The peak is the child's own ``VmHWM``: ``getrusage(RUSAGE_SELF).ru_maxrss`` would not do, because Linux
    carries the parent's high-water mark across fork + exec, so under a long pytest run it reported the
    test runner's RSS (7.8 GiB in CI), not lcc's."""
    code = ("import runpy, sys\n"
            "sys.argv = ['lcc', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('lcc', run_name='__main__')\n"
            "finally:\n"
            "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
            "    print('PEAK_RSS', int(hwm.split()[1]) * 1024, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    peak = next(int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("PEAK_RSS"))
    return r, peak


def test_a_config_only_directory_loads_weights_free_with_the_8b_spec(llama3_8b_config_dir):
    loaded = load_model(llama3_8b_config_dir, dtype="bfloat16", weights=False)
    assert not loaded.has_weights
    assert all(isinstance(p, FakeTensor) for p in loaded.model.parameters())
    s = loaded.spec
    assert (s.layers, s.heads, s.kv_heads, s.head_dim, s.hidden, s.vocab) == (32, 32, 8, 128, 4096, 128256)
    assert s.params == LLAMA3_8B_PARAMS and s.dtype == "bfloat16"
    assert s.rotary.theta == 500000.0 and s.trained_len == 8192
    assert s.kv_bytes_per_token() == KV_PER_TOKEN_BF16 == 128 * 1024


def test_a_config_only_directory_is_refused_where_weights_are_needed(llama3_8b_config_dir):
    with pytest.raises(UsageError, match="no \\*.safetensors weights") as err:
        load_model(llama3_8b_config_dir)
    assert "inspect, cost and plan accept a config-only directory" in str(err.value)
    assert "\n" not in str(err.value)
    loaded = load_model(llama3_8b_config_dir, weights=False)
    with pytest.raises(UsageError, match="lcc compile needs the model's weights"):
        loaded.require_weights("lcc compile")


def test_a_full_load_has_weights_and_requires_nothing(tiny):
    tiny("llama").require_weights("lcc run")
    free = load_model("tiny-llama", weights=False)
    assert free.weights_hash == tiny("llama").weights_hash and free.spec == tiny("llama").spec


def test_inspect_reads_only_the_config(llama3_8b_config_dir):
    r, peak = _lcc_with_peak_rss("inspect", str(llama3_8b_config_dir), "--dtype", "bfloat16", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kv_bytes_per_token"] == 128 * 1024 and d["kv_bytes_at_trained_len"] == 128 * 1024 * 8192
    assert d["params"] == LLAMA3_8B_PARAMS and d["weights_hash"] is None
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**30:.1f} GiB"


@pytest.mark.slow
def test_cost_of_the_8b_config_runs_without_its_weights(llama3_8b_config_dir):
    r, peak = _lcc_with_peak_rss("cost", str(llama3_8b_config_dir), "--lengths", "8k,128k", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    fp32_per_token = 2 * KV_PER_TOKEN_BF16  # cost loads in the default dtype, float32
    assert [row["kv_cache"] for row in d["lengths"]] == [8192 * fp32_per_token, 131072 * fp32_per_token]
    assert d["lengths"][0]["weights"] >= 4 * 8_030_261_248  # Meta's parameter count, fp32: priced, not held
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**30:.1f} GiB"


@pytest.mark.slow
def test_plan_of_the_8b_config_runs_without_its_weights(llama3_8b_config_dir):
    r, peak = _lcc_with_peak_rss("plan", str(llama3_8b_config_dir), "--target-len", "32k", "--json")
    assert r.returncode in (0, 1), r.stderr  # 1: nothing fits, still a plan
    d = json.loads(r.stdout)
    bare = next(c for c in d["candidates"] if c["passes"] == [])
    assert d["target_len"] == 32768 and "error" not in bare
    assert bare["memory"] > 32768 * 2 * KV_PER_TOKEN_BF16  # at least its float32 cache at 32k
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**30:.1f} GiB"
