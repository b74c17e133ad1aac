"""The planner: enumerate pass lists, price each, drop what does not fit, rank the rest by predicted time.

Candidates are built only from passes registered at run time (``lcc.passes.REGISTRY``):
none, flash, attention-chunked at a few chunk sizes, sliding-window (approximate) alone and
with an attention algo, and every other registered pass with its defaults, alone and with
flash.  A candidate that a pass refuses (preconditions) is dropped with its error kept.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from lcc.capture.program import Program
from lcc.cost.hardware import Profile, load_profile
from lcc.cost.model import Evaluation, program_cost
from lcc.cost.quality import LEVELS, allowed, load_measurements, plan_risk
from lcc.cost.symbols import human_bytes, human_seconds
from lcc.errors import UsageError

QUALITIES = ("exact", "balanced", "any")
BUDGET_FRACTION = 0.9  # of the device's memory: the rest for the runtime, the CUDA context and fragmentation
CHUNKS = (256, 1024, 4096)
KNOWN = {"flash", "attention-chunked", "sliding-window"}
# passes the planner never proposes on its own: memory-tokens needs memory trained for the model
# (`lcc train-memory`) and runs as a segment loop outside the captured graphs, which the cost walk cannot price
NOT_PLANNED = {"memory-tokens"}
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

    def to_dict(self) -> dict:
        return {"passes": self.passes, "memory": self.memory, "prefill_time": self.prefill_time,
                "decode_tokens_per_s": self.decode_tokens_per_s, "risk": self.risk,
                "risk_detail": self.risk_detail, "fits": self.fits, **({"error": self.error} if self.error else {})}


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


def candidate_pass_lists(target_len: int, registry=None) -> list[list[str]]:
    from lcc.passes import REGISTRY

    reg = REGISTRY if registry is None else registry
    lists: list[list[str]] = [[]]
    if "flash" in reg:
        lists.append(["flash"])
    if "attention-chunked" in reg:
        lists += [[f"attention-chunked:chunk={c}"] for c in CHUNKS if c < target_len]
    if "sliding-window" in reg:
        sw = "sliding-window:window=4096,sinks=4"
        lists.append([sw])
        if "flash" in reg:
            lists.append([sw, "flash"])
        if "attention-chunked" in reg:
            lists.append([sw, "attention-chunked:chunk=1024"])
    for name in sorted(set(reg) - KNOWN - NOT_PLANNED):
        lists.append([name])
        if "flash" in reg:
            lists.append([name, "flash"])
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
_WATCHED: set[int] = set()


def _forget(pid: int) -> None:
    _WATCHED.discard(pid)
    for key in [k for k in _COSTS if k[0] == pid]:
        del _COSTS[key]


def rewritten_cost(program: Program, passes: list[str], kind: str):
    """The ProgramCost of ``program`` after ``passes`` (memoised: it does not depend on length or profile)."""
    from lcc.passes import apply_passes

    key = (id(program), tuple(passes), kind)
    if key not in _COSTS:
        if id(program) not in _WATCHED:
            weakref.finalize(program, _forget, id(program))
            _WATCHED.add(id(program))
        try:
            _COSTS[key] = program_cost(apply_passes(program, passes), kind)
        except Exception as e:  # a pass's preconditions refused this program: keep the reason
            _COSTS[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return _COSTS[key]


def price(program: Program, passes: list[str], target_len: int, profile: Profile, data=None) -> Candidate:
    cand = Candidate(list(passes))
    pc = rewritten_cost(program, passes, profile.kind)
    if isinstance(pc, str):
        cand.error = pc
        return cand
    ev = pc.evaluate(target_len, profile)
    risk = plan_risk(passes, target_len, data)
    cand.memory, cand.prefill_time, cand.decode_tokens_per_s = ev.memory, ev.prefill_time, ev.decode_tokens_per_s
    cand.risk, cand.risk_detail, cand.evaluation = risk.level, risk.detail, ev
    return cand


def plan(loaded_or_program, target_len: int, profile: Profile | str = "h100", memory_budget: float | None = None,
         quality: str = "balanced", candidates: list[list[str]] | None = None) -> Plan:
    """Price every candidate pass list at ``target_len`` on ``profile`` and pick the fastest that fits."""
    if quality not in QUALITIES:
        raise UsageError(f"unknown quality {quality!r}: use one of {', '.join(QUALITIES)}")
    profile = load_profile(profile) if isinstance(profile, str) else profile
    budget = float(memory_budget) if memory_budget else BUDGET_FRACTION * profile.memory_bytes
    program = _program(loaded_or_program)
    data = load_measurements()
    cands = [price(program, p, target_len, profile, data)
             for p in (candidates if candidates is not None else candidate_pass_lists(target_len))]
    for c in cands:
        c.fits = c.error is None and c.memory is not None and c.memory <= budget
    priced = [c for c in cands if c.error is None]
    ok = sorted((c for c in priced if c.fits and allowed(c.risk, quality)),
                key=lambda c: (c.prefill_time, -(c.decode_tokens_per_s or 0), LEVELS.index(c.risk), c.memory,
                               len(c.passes)))
    ranked = ok + sorted((c for c in priced if c not in ok), key=lambda c: c.memory) + \
        [c for c in cands if c.error is not None]
    chosen = ok[0] if ok else None
    return Plan(target_len, profile.name, budget, quality, chosen, ranked,
                _reason(chosen, priced, ok, budget, quality, target_len, program, profile))


def _name(c: Candidate) -> str:
    return " + ".join(c.passes) or "no passes"


def _reason(chosen, priced, ok, budget, quality, target_len, program, profile) -> str:
    fit = [c for c in priced if c.fits]
    beyond = ""
    if target_len > program.spec.trained_len:
        beyond = (f" The target is beyond the model's trained length ({program.spec.trained_len}): quality there "
                  "is not covered by the risk column.")
    if chosen is None:
        if not fit:
            smallest = min(priced, key=lambda c: c.memory) if priced else None
            if smallest is None:
                return "no candidate could be priced" + beyond
            return (f"nothing fits in {human_bytes(budget)} on {profile.name}: the smallest is "
                    f"{_name(smallest)} at {human_bytes(smallest.memory)}." + beyond)
        return (f"{len(fit)} candidate(s) fit in {human_bytes(budget)} but none meets quality={quality} "
                f"(their risks: {', '.join(sorted({c.risk for c in fit}))}); try --quality any." + beyond)
    text = (f"{_name(chosen)}: fastest predicted prefill ({human_seconds(chosen.prefill_time)}) of {len(ok)} "
            f"candidate(s) that fit in {human_bytes(budget)} on {profile.name} with quality={quality} (risk "
            f"{chosen.risk}); memory {human_bytes(chosen.memory)}")
    if chosen.decode_tokens_per_s:
        text += f", decode {chosen.decode_tokens_per_s:.1f} tokens/s"
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


def _slower_why(bare: Candidate, profile) -> str:
    """What the unrewritten program's time goes to: its attention scores go through memory."""
    ops = bare.evaluation.time_by_op if bare.evaluation is not None else {}
    attn = ops.get("lcc.attention", 0.0)
    total = sum(ops.values()) or 1.0
    where = "HBM" if profile.kind == "cuda" else "memory"
    return f"its unfused attention writes the L x L scores to {where}, {attn / total:.0%} of its time"


def plan_for_compile(loaded, target_len: int, device: str = "cpu"):
    """The hook ``lcc compile`` calls: (the plan as JSON-able dict, the chosen PassSpecs)."""
    from lcc.passes import parse_pass

    p = plan(loaded, target_len, device)
    if p.chosen is None:
        raise UsageError(f"lcc compile: {p.reason} Give the passes with --pass, or a device with more memory.")
    d = {"source": "planner", "passes": p.passes, "reason": p.reason, "device": p.device,
         "quality": p.quality, "memory_budget": p.memory_budget,
         "candidates": [_row(c) for c in p.candidates]}
    return d, [parse_pass(s) for s in p.passes]


def _row(c: Candidate) -> dict:
    return {"passes": " + ".join(c.passes) or "(none)",
            "memory": human_bytes(c.memory) if c.memory is not None else "-",
            "prefill_time": human_seconds(c.prefill_time) if c.prefill_time is not None else "-",
            "decode_tokens_per_s": f"{c.decode_tokens_per_s:.1f}" if c.decode_tokens_per_s else "-",
            "risk": c.risk, "fits": c.fits}
