"""The planner's quality levels: which candidates qualify at the target length, and in what order.

Defined on the ratios of :mod:`lcc.quality.records` (a candidate against the unmodified model at
its trained length, on the same text and prompts):

- ``exact``: exact passes only, within the trained length (past it nothing qualifies: intended).
- ``balanced`` (the default): among candidates whose retrieval ratio at the target is >= 0.9, the
  fastest whose perplexity ratio is within 10% of the best of them.
- For ``balanced`` and ``retrieval``, figures measured at (or past) the target outrank figures
  extrapolated from a shorter length or borrowed (priors): the latter compete only where no
  candidate is measured at the target.
- ``retrieval``: the highest retrieval ratio, then the lowest perplexity ratio, then speed.
- ``any``: the fastest that fits, whatever its quality.

Past the trained length a candidate without a position method (a RoPE method, the ReRoPE family,
a bounded-position cache) is out of range: listed, never chosen unless ``any``. A figure whose
retrieval is unmeasured does not qualify for ``balanced`` or ``retrieval``.
"""

from __future__ import annotations

from dataclasses import dataclass

QUALITIES = ("exact", "balanced", "retrieval", "any")
RETRIEVAL_MIN = 0.9
PPL_SLACK = 1.10
RISKS = ("none", "low", "medium", "high", "unmeasured")


@dataclass
class Ranked:
    """The candidates that qualify, best first, and for the others why not (by position in the input)."""

    ok: list
    why_not: dict


def check_quality(quality: str) -> str:
    """``quality`` if it names a level; else the one-line usage error of ``--quality`` (lcc plan, lcc compile)."""
    from lcc.errors import UsageError

    if quality not in QUALITIES:
        raise UsageError(f"unknown quality {quality!r}: use --quality {', '.join(QUALITIES[:-1])} or {QUALITIES[-1]}")
    return quality


def risk(estimate, extrapolated_or_prior: bool) -> str:
    """A one-word summary of an estimate: none (exact), low, medium, high, or unmeasured; raised one level
    when the figure is extrapolated past the longest measurement or borrowed (a prior)."""
    if estimate is None or estimate.retrieval_ratio is None and estimate.ppl_ratio is None:
        return "unmeasured"
    if estimate.source == "exact":
        return "none"
    r, p = estimate.retrieval_ratio, estimate.ppl_ratio
    if r is not None and r >= RETRIEVAL_MIN and (p is None or p <= 1.25):
        level = "low"
    elif (r is None or r >= 0.5) and (p is None or p <= 2.0):
        level = "medium"
    else:
        level = "high"
    if extrapolated_or_prior and level != "high":
        level = RISKS[RISKS.index(level) + 1]
    return level


def speed_key(c):
    """Fastest first; between candidates as fast, the better-founded quality figure (a measurement before a
    prior: ``risk``), then the shorter pass list."""
    risk_level = RISKS.index(c.risk) if getattr(c, "risk", None) in RISKS else len(RISKS)
    return (c.prefill_time, -(c.decode_tokens_per_s or 0), c.memory, risk_level, len(c.passes))


def rank(cands, quality: str, beyond: bool) -> Ranked:
    """Order the candidates that fit (``c.fits``) under ``quality``; ``beyond``: the target is past the
    trained length. Each candidate has ``estimate`` (``lcc.quality.Estimate``), ``positions`` (it carries a
    position method), ``exact`` (every pass exact at the target) and the cost fields."""
    why = {}
    pool = []
    for i, c in enumerate(cands):
        if not c.fits:
            why[i] = "does not fit"
        elif beyond and not c.positions and quality != "any":
            why[i] = "out of range: no position method past the trained length"
        elif quality == "exact" and not (c.exact and not beyond):
            why[i] = "not exact at the target"
        elif quality in ("balanced", "retrieval") and (c.estimate is None or c.estimate.retrieval_ratio is None):
            why[i] = "retrieval unmeasured"
        elif quality == "balanced" and c.estimate.retrieval_ratio < RETRIEVAL_MIN:
            why[i] = f"retrieval ratio {c.estimate.retrieval_ratio:.2f} < {RETRIEVAL_MIN}"
        else:
            pool.append(c)
    if quality in ("balanced", "retrieval"):
        # a figure measured at (or past) the target outranks one carried there from a shorter length or borrowed
        # (a 16k perplexity ratio is no rival for a 32k one): while some candidate has one, the others wait
        at_target = [c for c in pool if c.estimate.source in ("record", "exact") and not c.estimate.extrapolated]
        if at_target:
            for c in pool:
                if c not in at_target:
                    came = (f"extrapolated from {c.estimate.length} tokens" if c.estimate.source == "record"
                            else "from a prior")
                    why[cands.index(c)] = f"quality {came} while others are measured at the target"
            pool = at_target
    if quality == "balanced" and pool:
        known = [c.estimate.ppl_ratio for c in pool if c.estimate.ppl_ratio is not None]
        best = min(known) if known else None
        keep = []
        for c in pool:
            p = c.estimate.ppl_ratio
            if best is not None and (p is None or p > PPL_SLACK * best):
                why[cands.index(c)] = (f"perplexity ratio {p:.2f} more than {PPL_SLACK - 1:.0%} above the best "
                                       f"({best:.2f})" if p is not None else "perplexity unmeasured")
            else:
                keep.append(c)
        pool = keep
    if quality == "retrieval":
        pool.sort(key=lambda c: (-c.estimate.retrieval_ratio, c.estimate.ppl_ratio if c.estimate.ppl_ratio
                                 is not None else float("inf"), *speed_key(c)))
    else:
        pool.sort(key=speed_key)
    return Ranked(pool, why)
