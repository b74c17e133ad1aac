"""The planner: enumerate pass lists, price each, estimate its quality at the target, rank within a quality level.

Candidates come from the passes' own declarations (``lcc.passes.REGISTRY``): no passes, then
each pass the planner may propose (``plan(target_len, trained_len)`` gives its argument strings:
past the trained length the position methods with their factor from the target; memory-tokens
declares none), alone and followed by each of its ``plan_with`` passes where the two compose
(``check_passes``).  A candidate that a pass refuses (preconditions) is dropped with its error kept.
Each candidate's quality at the target comes from the model's quality records, else a prior
(:mod:`lcc.quality`); :mod:`lcc.quality.rank` defines the levels.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from lcc.capture.program import Program
from lcc.cost.hardware import Profile, load_profile
from lcc.cost.model import Evaluation, program_cost
from lcc.errors import UsageError
from lcc.lengths import format_length
from lcc.quality import Estimate, load as load_records, prior_estimate, quality_key, shipped
from lcc.quality.rank import QUALITIES, rank, risk as risk_of
from lcc.ui import human_bytes, human_seconds
BUDGET_FRACTION = 0.9  # of the device's memory: the rest for the runtime, the CUDA context and fragmentation
CAPTURE_CAPACITY = 128  # the capacity is symbolic in the cost: a small capture prices every length


@dataclass
class Candidate:
    passes: list[str]
    memory: float | None = None
    prefill_time: float | None = None
    decode_tokens_per_s: float | None = None
    risk: str = "none"
    risk_detail: str = ""
    fits: bool = False
    error: str | None = None
    evaluation: Evaluation | None = field(default=None, repr=False)
    positions: bool = False  # carries a position method (a pass in the positions slot)
    exact: bool = False  # every pass is exact at the target length
    estimate: Estimate | None = None  # quality at the target (record, prior or exact)
    why_not: str = ""  # why it does not qualify (empty for the qualifying ones)

    def to_dict(self) -> dict:
        return {"passes": self.passes, "memory": self.memory, "prefill_time": self.prefill_time,
                "decode_tokens_per_s": self.decode_tokens_per_s, "risk": self.risk,
                "risk_detail": self.risk_detail, "fits": self.fits, "positions": self.positions,
                "quality": self.estimate.to_dict() if self.estimate else None, "why_not": self.why_not,
                **({"error": self.error} if self.error else {})}


@dataclass
class Plan:
    target_len: int
    device: str
    memory_budget: float
    quality: str
    chosen: Candidate | None
    candidates: list[Candidate]
    reason: str

    @property
    def passes(self) -> list[str]:
        return list(self.chosen.passes) if self.chosen else []

    def to_dict(self) -> dict:
        return {"target_len": self.target_len, "device": self.device, "memory_budget": self.memory_budget,
                "quality": self.quality, "reason": self.reason,
                "chosen": self.chosen.to_dict() if self.chosen else None,
                "candidates": [c.to_dict() for c in self.candidates]}


def candidate_pass_lists(target_len: int, registry=None, trained_len: int | None = None) -> list[list[str]]:
    """[] and, per declared pass (registry order), its planned specs alone and with each companion that composes."""
    from lcc.passes import REGISTRY, check_passes

    reg = REGISTRY if registry is None else registry
    trained = target_len if trained_len is None else trained_len
    lists: list[list[str]] = [[]]
    for name in reg:
        d = reg[name] if reg[name] is not None else REGISTRY.get(name)
        if d is None or d.plan is None:
            continue
        for args in d.plan(target_len, trained):
            spec = f"{name}:{args}" if args else name
            lists.append([spec])
            for other in d.plan_with:
                if other.partition(":")[0] not in reg:
                    continue
                try:
                    check_passes([spec, other])
                except UsageError:
                    continue
                lists.append([spec, other])
    out, seen = [], set()
    for lst in lists:
        if tuple(lst) not in seen:
            seen.add(tuple(lst))
            out.append(lst)
    return out


def _program(loaded_or_program) -> Program:
    if isinstance(loaded_or_program, Program):
        if loaded_or_program.stage == "captured":
            from lcc.passes import canonicalize

            return canonicalize(loaded_or_program)
        return loaded_or_program
    from lcc.capture import capture
    from lcc.passes import canonicalize

    return canonicalize(capture(loaded_or_program, CAPTURE_CAPACITY, entries=("prefill", "decode")))


# (id(base program), passes, device kind) -> ProgramCost or an error line; entries die with the program
_COSTS: dict[tuple, object] = {}
# (id(base program), passes) -> the program after them: [X, Y] runs only Y on [X]'s (its ProgramCost holds it)
_REWRITTEN: dict[tuple, Program] = {}
_WATCHED: set[int] = set()


def _forget(pid: int) -> None:
    _WATCHED.discard(pid)
    for memo in (_COSTS, _REWRITTEN):
        for key in [k for k in memo if k[0] == pid]:
            del memo[key]


def rewritten_cost(program: Program, passes: list[str], kind: str):
    """The ProgramCost of ``program`` after ``passes`` (memoised: it does not depend on length or profile)."""
    from lcc.capture.program import graphs_not_run
    from lcc.passes import apply_passes

    key = (id(program), tuple(passes), kind)
    if key not in _COSTS:
        if id(program) not in _WATCHED:
            weakref.finalize(program, _forget, id(program))
            _WATCHED.add(id(program))
        try:
            done = _REWRITTEN.get((id(program), tuple(passes[:-1]))) if len(passes) > 1 else None
            with graphs_not_run():  # priced from their graphs, never run: no code generated for them
                rewritten = _REWRITTEN[(id(program), tuple(passes))] = apply_passes(program, passes, done=done)
            _COSTS[key] = program_cost(rewritten, kind)
        except Exception as e:  # a pass's preconditions refused this program: keep the reason
            _COSTS[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return _COSTS[key]


def measure_command(program: Program, target_len: int) -> str:

    return f"lcc quality {program.spec.model_id} --lengths {format_length(target_len)}"


def estimate(program: Program, passes: list[str], target_len: int, records, reference,
             positions: bool = True) -> Estimate:
    """Quality of ``passes`` at ``target_len``: exact, the model's record, or a prior (its own or the reference's).

    Past the trained length a list without a position method is judged as the unmodified model there
    (it is no better) unless a record at that length or longer says otherwise."""
    trained = program.spec.trained_len
    if not quality_key(passes, target_len) and target_len <= trained:
        return Estimate(None, None, 1.0, 1.0, None, False, "exact", "exact passes within the trained length")
    found = records.estimate(passes, target_len) if records is not None else None
    if found is not None and (positions or target_len <= trained or not found.extrapolated):
        return found
    if not positions and target_len > trained:
        passes = []  # judged as the unmodified model past its trained length
        found = records.estimate(passes, target_len) if records is not None else None
        if found is not None:
            return found
    measure = measure_command(program, target_len)
    own = prior_estimate(passes, target_len, trained, records, measure) if records is not None else None
    if own is not None and (own.ppl_ratio is not None or own.retrieval_ratio is not None):
        return own
    return prior_estimate(passes, target_len, trained, reference, measure)


def price(program: Program, passes: list[str], target_len: int, profile: Profile, records=None,
          reference=None) -> Candidate:
    from lcc.passes import parse_pass

    specs = [parse_pass(p) for p in passes]
    cand = Candidate(list(passes), positions=any("positions" in s.definition.slots for s in specs),
                     exact=all(s.exact_for(target_len, program.spec.trained_len) for s in specs))
    pc = rewritten_cost(program, passes, profile.kind)
    if isinstance(pc, str):
        cand.error = pc
        return cand
    ev = pc.evaluate(target_len, profile)
    cand.memory, cand.prefill_time, cand.decode_tokens_per_s = ev.memory, ev.prefill_time, ev.decode_tokens_per_s
    cand.evaluation = ev
    cand.estimate = estimate(program, passes, target_len, records, reference, cand.positions)
    cand.risk = risk_of(cand.estimate, cand.estimate.extrapolated or cand.estimate.source == "prior")
    cand.risk_detail = cand.estimate.detail
    return cand


def plan(loaded_or_program, target_len: int, profile: Profile | str = "h100", memory_budget: float | None = None,
         quality: str = "balanced", candidates: list[list[str]] | None = None) -> Plan:
    """Price every candidate pass list at ``target_len`` on ``profile`` and pick the fastest that fits."""
    if quality not in QUALITIES:
        raise UsageError(f"unknown quality {quality!r}: use one of {', '.join(QUALITIES)}")
    profile = load_profile(profile) if isinstance(profile, str) else profile
    budget = float(memory_budget) if memory_budget else BUDGET_FRACTION * profile.memory_bytes
    program = _program(loaded_or_program)
    trained = program.spec.trained_len
    records = load_records(program.meta["weights_hash"], program.spec.model_id, trained) \
        if program.meta.get("weights_hash") else None
    reference = next(iter(shipped()), None)
    lists = candidates if candidates is not None else candidate_pass_lists(target_len, trained_len=trained)
    cands = [price(program, p, target_len, profile, records, reference) for p in lists]
    for c in cands:
        c.fits = c.error is None and c.memory is not None and c.memory <= budget
    priced = [c for c in cands if c.error is None]
    ranking = rank(priced, quality, beyond=target_len > trained)
    ok = ranking.ok
    for i, c in enumerate(priced):
        c.why_not = ranking.why_not.get(i, "")
    ranked = ok + sorted((c for c in priced if c not in ok), key=lambda c: c.memory) + \
        [c for c in cands if c.error is not None]
    chosen = ok[0] if ok else None
    return Plan(target_len, profile.name, budget, quality, chosen, ranked,
                _reason(chosen, priced, ok, budget, quality, target_len, program, profile))


def longest_plan(loaded_or_program, max_len: int, profile: Profile | str = "h100", memory_budget: float | None = None,
                 quality: str = "balanced") -> Plan:
    """``--target-len auto``: the plan at the longest length up to ``max_len`` (powers of two, and ``max_len``)
    at which some candidate fits the budget and meets the quality level; else the plan at the shortest."""
    program = _program(loaded_or_program)
    lengths = sorted({max_len} | {1 << k for k in range(10, 64) if (1 << k) <= max_len}, reverse=True)
    result = None
    for n in lengths:
        result = plan(program, n, profile, memory_budget, quality)
        if result.chosen is not None:
            result.reason = f"longest length up to {max_len} that fits and meets quality={quality}: {n}. " + \
                result.reason
            return result
    return result


def _name(c: Candidate) -> str:
    return " + ".join(c.passes) or "no passes"


def _reason(chosen, priced, ok, budget, quality, target_len, program, profile) -> str:
    fit = [c for c in priced if c.fits]
    beyond = ""
    if target_len > program.spec.trained_len:
        beyond = (f" The target is {target_len / program.spec.trained_len:g}x the model's trained length "
                  f"({program.spec.trained_len}): only candidates with a position method qualify.")
    if chosen is None and quality == "exact" and beyond:
        return (f"nothing is exact past the trained length ({program.spec.trained_len} tokens): every candidate "
                f"changes the model there; use --quality balanced (the default) or retrieval.")
    if chosen is None:
        if not fit:
            smallest = min(priced, key=lambda c: c.memory) if priced else None
            if smallest is None:
                return "no candidate could be priced" + beyond
            return (f"nothing fits in {human_bytes(budget)} on {profile.name}: the smallest is "
                    f"{_name(smallest)} at {human_bytes(smallest.memory)}." + beyond)
        # the nearest misses first: a position method (past the trained length), the best retrieval, perplexity
        def near(c):
            r = c.estimate.retrieval_ratio if c.estimate is not None else None
            p = c.estimate.ppl_ratio if c.estimate is not None else None
            return (not getattr(c, "positions", True), -(r if r is not None else -1.0),
                    p if p is not None else float("inf"))

        why = "; ".join(f"{_name(c)}: {c.why_not}" for c in sorted(fit, key=near)[:4] if c.why_not)
        hint = ("--quality retrieval takes the best retrieval, any the fastest" if quality == "balanced"
                else "try --quality retrieval or any")
        return (f"{len(fit)} candidate(s) fit in {human_bytes(budget)} but none meets quality={quality} "
                f"({why}); {hint}." + beyond)
    text = (f"{_name(chosen)}: fastest predicted prefill ({human_seconds(chosen.prefill_time)}) of {len(ok)} "
            f"candidate(s) that fit in {human_bytes(budget)} on {profile.name} with quality={quality} (risk "
            f"{chosen.risk}); memory {human_bytes(chosen.memory)}")
    if chosen.decode_tokens_per_s:
        text += f", decode {chosen.decode_tokens_per_s:.1f} tokens/s"
    text += f"; quality at {format_length(target_len)}: {_quality_text(chosen.estimate)}"
    bare = next((c for c in priced if not c.passes), None)
    if bare is not None and chosen is not bare:
        text += (f"; no passes: {human_seconds(bare.prefill_time)}, {human_bytes(bare.memory)}"
                 f"{'' if bare.fits else ' (does not fit)'}")
        if chosen.prefill_time and bare.prefill_time and bare.prefill_time > 1.2 * chosen.prefill_time:
            text += f" ({bare.prefill_time / chosen.prefill_time:.1f}x slower: {_slower_why(bare, profile)})"
    runner = next((c for c in ok[1:]), None)
    if runner is not None and runner is not bare:
        text += f"; next: {_name(runner)} ({human_seconds(runner.prefill_time)})"
    dropped = len(priced) - len(fit)
    if dropped:
        text += f"; {dropped} did not fit"
    return text + "." + beyond


def _quality_text(est: Estimate | None) -> str:
    if est is None:
        return "unmeasured"
    if est.source == "exact":
        return "exact (the model's own outputs)"
    parts = []
    if est.ppl_ratio is not None:
        parts.append(f"perplexity {est.ppl_ratio:.2f}x")
    if est.retrieval_ratio is not None:
        parts.append(f"passkey {est.retrieval_ratio:.2f}x")
    figures = ", ".join(parts) or "no figures"
    return f"{figures} the unmodified model at its trained length ({est.detail})"


def _slower_why(bare: Candidate, profile) -> str:
    """What the unrewritten program's time goes to: its attention scores go through memory."""
    ops = bare.evaluation.time_by_op if bare.evaluation is not None else {}
    attn = ops.get("lcc.attention", 0.0)
    total = sum(ops.values()) or 1.0
    where = "HBM" if profile.kind == "cuda" else "memory"
    return f"its unfused attention writes the L x L scores to {where}, {attn / total:.0%} of its time"


def plan_for_compile(loaded, target_len: int, device: str = "cpu", quality: str = "balanced"):
    """The hook ``lcc compile`` calls: (the plan as JSON-able dict, the chosen PassSpecs)."""
    from lcc.passes import parse_pass

    p = plan(loaded, target_len, device, quality=quality)
    if p.chosen is None:
        fits = any(c.fits for c in p.candidates)
        raise UsageError(f"lcc compile: {p.reason} Give the passes with --pass"
                         + (", or another --quality." if fits else ", or a device with more memory."))
    d = {"source": "planner", "passes": p.passes, "reason": p.reason, "device": p.device,
         "quality": p.quality, "memory_budget": p.memory_budget,
         "quality_at_target": p.chosen.estimate.to_dict() if p.chosen.estimate else None,
         "candidates": [_row(c) for c in p.candidates]}
    return d, [parse_pass(s) for s in p.passes]


def _row(c: Candidate) -> dict:
    return {"passes": " + ".join(c.passes) or "(none)",
            "memory": human_bytes(c.memory) if c.memory is not None else "-",
            "prefill_time": human_seconds(c.prefill_time) if c.prefill_time is not None else "-",
            "decode_tokens_per_s": f"{c.decode_tokens_per_s:.1f}" if c.decode_tokens_per_s else "-",
            "risk": c.risk, "fits": c.fits, "why_not": c.why_not,
            "ppl_ratio": _ratio(c, "ppl_ratio"), "retrieval_ratio": _ratio(c, "retrieval_ratio"),
            "quality_source": c.estimate.detail if c.estimate else "-"}


def _ratio(c: Candidate, name: str) -> str:
    value = getattr(c.estimate, name, None) if c.estimate else None
    return "-" if value is None else f"{value:.2f}"
