"""The prior for a model without quality records: this project's measured ratios on another model.

Training-free length extension behaves alike across RoPE models at the same extension ratio
s = L / trained length (Position Interpolation, NTK-aware, YaRN and ReRoPE are all stated in
terms of s; Peng et al. 2023, "YaRN", Table 1 / Fig. 3; Su 2023, ReRoPE). So a model with no
records borrows the ratios (to its own baseline) that the reference model's records give for
the same method at the same s: the pass names and RoPE method must agree, window-like
parameters are compared relative to the trained length. Without a position method, past the
trained length a model is taken to fail (retrieval 0; docs/rope.md: perplexity x4 at 2x and
x60 at 4x the trained length). Every prior says so in its detail, with the command that
would measure the model instead.
"""

from __future__ import annotations

from lcc.quality.records import Estimate, Records, quality_key

RELATIVE = ("window", "chunk", "group", "local")  # parameters that scale with the trained length


def signature(passes, length: int, trained_len: int) -> tuple:
    """The quality-relevant passes as (name, method, window-like parameters / trained length)."""
    from lcc.passes import parse_pass

    out = []
    for text in quality_key(passes, length):
        spec = parse_pass(text)
        args = spec.kwargs
        rel = tuple(sorted((k, round(v / trained_len, 4)) for k, v in args.items()
                           if k in RELATIVE and isinstance(v, (int, float))))
        out.append((spec.name, args.get("method"), rel))
    return tuple(out)


def prior_estimate(passes, length: int, trained_len: int, reference: Records | None, measure: str) -> Estimate:
    """Ratios borrowed from ``reference`` at the same extension ratio (see the module docstring)."""
    sig = signature(passes, length, trained_len)
    s = length / trained_len
    if not sig and s <= 1:
        return Estimate(None, None, 1.0, 1.0, None, False, "exact", "exact passes within the trained length")
    if not sig:
        return Estimate(None, 0.0, None, 0.0, None, s > 1, "prior",
                        f"prior: no position method past the trained length ({s:g}x) fails; measure it: {measure}")
    if reference is not None:
        rows = [r for r in reference.rows if signature(r.passes, r.length, reference.trained_len) == sig]
        longer = sorted((r for r in rows if r.length / reference.trained_len >= s), key=lambda r: r.length)
        row = longer[0] if longer else (max(rows, key=lambda r: r.length) if rows else None)
        if row is not None:
            est = reference.estimate(row.passes, row.length)
            if est is not None:
                s_ref = row.length / reference.trained_len
                return Estimate(None, None, est.ppl_ratio, est.retrieval_ratio, None, not longer, "prior",
                                f"prior: {reference.model}'s measured ratios at {s_ref:g}x its trained length "
                                f"({est.detail}); measure this model: {measure}")
    return Estimate(None, None, None, None, None, True, "prior",
                    f"prior: nothing measured for this method at {s:g}x; measure it: {measure}")
