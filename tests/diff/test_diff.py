"""``lcc diff`` over every tiny family: the canonical stage within the fp32 rule of HF eager."""

import pytest

from lcc.diff import diff
from tests.conftest import TINY_FAMILIES


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_canonical_stage_within_tolerance(family, tiny):
    reports = diff(tiny(family), ["sliding-window:window=1k,sinks=0"], length=64)
    by_name = {r.name: r for r in reports}
    assert by_name["canonical"].max_abs <= by_name["canonical"].limit and by_name["canonical"].ok
    wide = reports[-1]
    assert wide.exact and wide.ok and wide.vs_prev_max_abs <= 1e-5  # window covers the length: exact


def test_approximate_stage_reports_distance_without_failing(tiny):
    reports = diff(tiny("llama"), ["sliding-window:window=4,sinks=1"], length=48)
    last = reports[-1]
    assert not last.exact and last.ok
    assert last.max_abs > 1e-3 and 0 < last.kl and last.top1 < 1.0 and last.cosine < 1.0
