"""The quality levels: which candidates qualify and in what order (written from the README's definitions)."""

from dataclasses import dataclass

import pytest

from lcc.quality import Estimate
from lcc.quality.rank import rank, risk


def est(ppl_ratio, retrieval_ratio, source="record", extrapolated=False):
    return Estimate(None, None, ppl_ratio, retrieval_ratio, 1, extrapolated, source, "")


@dataclass
class Cand:
    passes: list
    prefill_time: float
    estimate: Estimate
    positions: bool = True
    exact: bool = False
    fits: bool = True
    memory: float = 1.0
    decode_tokens_per_s: float = 1.0


def cands():
    return [Cand(["fast-bad-retrieval"], 1.0, est(1.0, 0.5)),
            Cand(["fast-ok"], 2.0, est(1.50, 1.0)),
            Cand(["slow-best-ppl"], 3.0, est(1.40, 0.95)),
            Cand(["fastest-no-positions"], 0.5, est(60.0, 0.0), positions=False),
            Cand(["does-not-fit"], 0.1, est(1.0, 1.0), fits=False),
            Cand(["unmeasured-retrieval"], 0.2, est(1.2, None))]


def names(ranked):
    return [c.passes[0] for c in ranked.ok]


def test_balanced_is_the_fastest_within_10_percent_of_the_best_perplexity_among_retrievers():
    # retrievers (>= 0.9): fast-ok (1.50) and slow-best-ppl (1.40); 1.50 > 1.1 * 1.40 = 1.54? no: 1.50 <= 1.54
    assert names(rank(cands(), "balanced", beyond=True)) == ["fast-ok", "slow-best-ppl"]
    worse = cands()
    worse[1].estimate = est(1.60, 1.0)  # now more than 10% above the best (1.40)
    r = rank(worse, "balanced", beyond=True)
    assert names(r) == ["slow-best-ppl"] and "above the best" in r.why_not[1]


def test_retrieval_orders_by_retrieval_then_perplexity_then_speed():
    assert names(rank(cands(), "retrieval", beyond=True)) == ["fast-ok", "slow-best-ppl", "fast-bad-retrieval"]


def test_any_is_the_fastest_that_fits_even_without_a_position_method():
    assert names(rank(cands(), "any", beyond=True)) == ["unmeasured-retrieval", "fastest-no-positions",
                                                        "fast-bad-retrieval", "fast-ok", "slow-best-ppl"]


def test_past_the_trained_length_a_list_without_a_position_method_is_never_chosen_unless_any():
    for quality in ("balanced", "retrieval", "exact"):
        r = rank(cands(), quality, beyond=True)
        assert "fastest-no-positions" not in names(r)
        assert r.why_not[3].startswith("out of range")


def test_exact_qualifies_only_exact_lists_within_the_trained_length():
    c = [Cand(["exact"], 2.0, est(1.0, 1.0, "exact"), exact=True), Cand(["approx"], 1.0, est(1.0, 1.0))]
    assert names(rank(c, "exact", beyond=False)) == ["exact"]
    assert names(rank(c, "exact", beyond=True)) == []


@pytest.mark.parametrize("estimate,extra,level", [
    (est(1.0, 1.0, "exact"), False, "none"), (est(1.1, 1.0), False, "low"), (est(1.1, 1.0), True, "medium"),
    (est(1.8, 0.6), False, "medium"), (est(3.0, 0.0), False, "high"), (None, False, "unmeasured")])
def test_risk_summarises_the_ratios_and_is_raised_for_extrapolated_or_borrowed_figures(estimate, extra, level):
    assert risk(estimate, extra) == level


@pytest.mark.parametrize("quality", ["balanced", "retrieval"])
def test_a_figure_measured_at_the_target_outranks_one_carried_from_a_shorter_length(quality):
    """A perplexity ratio from 16k carried to 32k (or a prior) is no rival for one measured at 32k: while some
    candidate is measured at the target, the extrapolated and borrowed ones wait; where none is, they compete."""
    measured = Cand(["measured-at-target"], 3.0, est(2.4, 1.1))
    carried = Cand(["extrapolated"], 1.0, est(1.3, 1.0, extrapolated=True))
    borrowed = Cand(["prior"], 1.0, est(1.2, 1.1, source="prior"))
    ranked = rank([carried, borrowed, measured], quality, beyond=True)
    assert names(ranked) == ["measured-at-target"]
    assert "while others are measured at the target" in ranked.why_not[0] and ranked.why_not[1]
    assert names(rank([carried, borrowed], quality, beyond=True)) == (
        ["extrapolated", "prior"] if quality == "balanced" else ["prior", "extrapolated"])
