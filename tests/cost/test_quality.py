"""Quality risk from the measured data shipped with the package."""

import pytest

from lcc.cost.quality import load_measurements, pass_risk, plan_risk
from lcc.passes import parse_pass


def test_shipped_measurements_are_real_ppl_of_the_default_model():
    data = load_measurements()
    sw = data["sliding-window"]
    assert sw["model"] == "smollm2-135m" and sw["metric"] == "ppl" and len(sw["points"]) >= 4
    assert all(p["value"] >= p["baseline"] * 0.99 for p in sw["points"])


def test_exact_passes_and_covering_windows_carry_no_risk():
    assert pass_risk(parse_pass("flash"), 131072).level == "none"
    assert pass_risk(parse_pass("sliding-window:window=8192,sinks=4"), 8192).level == "none"


def test_sliding_window_risk_grows_with_length_over_window():
    near = pass_risk(parse_pass("sliding-window:window=4096,sinks=4"), 8192)
    far = pass_risk(parse_pass("sliding-window:window=4096,sinks=4"), 131072)
    levels = ("none", "low", "medium", "high")
    assert levels.index(far.level) > levels.index(near.level)
    assert "extrapolated" in far.detail


def test_approximate_pass_without_data_is_unmeasured():
    assert pass_risk(parse_pass("sliding-window"), 65536, data={}).level == "unmeasured"
    assert plan_risk(["flash", "sliding-window"], 65536, data={}).level == "unmeasured"
    assert plan_risk([], 65536).level == "none"


@pytest.mark.parametrize("quality,level,ok", [("exact", "low", False), ("balanced", "medium", True),
                                              ("balanced", "unmeasured", False), ("any", "high", True)])
def test_quality_modes(quality, level, ok):
    from lcc.cost.quality import allowed

    assert allowed(level, quality) is ok


def test_measurements_count_only_for_the_same_method_or_format():
    point = lambda params, n, base, value: {"params": params, "length": n, "baseline": base, "value": value}  # noqa
    data = {"rope-scaling": {"pass": "rope-scaling", "metric": "ppl", "model": "m", "points": [
                point({"method": "yarn", "factor": 4.0}, 8192, 6.0, 6.03),
                point({"method": "ntk", "factor": 4.0}, 8192, 6.0, 9.0)]},
            "kv-quant": {"pass": "kv-quant", "metric": "ppl", "model": "m", "points": [
                point({"bits": 2, "format": "int"}, 8192, 6.0, 8.0),
                point({"format": "fp8"}, 8192, 6.0, 6.001)]}}
    risk = lambda text: pass_risk(parse_pass(text), 8192, data=data)  # noqa: E731
    assert risk("rope-scaling:method=yarn,factor=4").level == "low"  # +0.5%: yarn's own point
    assert risk("rope-scaling:method=ntk,factor=4").level == "high"  # +50%
    assert risk("rope-scaling:method=llama3,factor=4").level == "unmeasured"
    assert risk("kv-quant:bits=2").level == "high" and risk("kv-quant:format=fp8").level == "low"
    assert risk("kv-quant:bits=8").level == "unmeasured"

