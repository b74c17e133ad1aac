"""Predicted peak activations vs the resident memory a real CPU prefill of SmolLM2-135M takes.

The oracle is the process itself: ``VmHWM - VmRSS`` around one prefill call in a fresh
subprocess (``lcc.cost.measure``), against the liveness walk's peak for the very program
run (``lcc.cost``), both with a cache of 8k.  ``flash`` (PyTorch's fused kernel on the CPU,
what the planner picks there) at 2k, 4k and 8k; no passes (the unfused path: ~256 MiB score
chunks and their softmax) at 2k only, where it is still cheap: its 8k prefill takes minutes.
One load and capture for all of it.
"""

import os

import pytest

from lcc.cost.measure import measure_prefill

pytestmark = pytest.mark.slow
RUNS = [(["flash"], [2048, 4096, 8192]), ([], [2048])]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_predicted_prefill_peak_within_15_percent_of_measured():
    rows = measure_prefill("smollm2-135m", [], capacity=8192, predict=True, runs=RUNS)
    assert [([p.split(":")[0] for p in r["passes"]], r["length"]) for r in rows] == [
        (p, n) for p, ns in RUNS for n in ns]
    for r in rows:
        err = r["predicted"] / r["peak_delta"] - 1
        print(f"{r['passes']} {r['length']}: predicted {r['predicted'] / 2**20:.0f} MiB, "
              f"measured {r['peak_delta'] / 2**20:.0f} MiB ({err:+.1%}), prefill {r['seconds']:.0f} s")
        assert abs(err) <= 0.15, r
