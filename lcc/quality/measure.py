"""``lcc quality``: measure a model's quality records (perplexity and passkey per position method and length).

A method's pass list at a length is the planner's (:func:`method_passes`): built from the
position passes' ``plan(target_len, trained_len)`` hooks, so a scaling method at L uses factor
L / trained length and the window methods their declared rule; ``flash`` joins where the pass
plans with it (the spelling the shipped records use), and ``none`` is ``["flash"]`` (the
unmodified model).  The protocol is fixed by :class:`Protocol`: first-window perplexity over
``windows`` windows of the text, passkey accuracy over depths 0.1/0.5/0.9 x ``trials`` seeded
trials.  Rows go to the user's records file of the weights (``$LCC_CACHE/quality``) after each
measurement, so an interrupted run keeps what it measured and a rerun skips it.
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lcc.errors import UsageError
from lcc.quality.records import Records, Row, quality_key, read_file, user_dir

NONE = "none"
BASELINE = ("flash",)  # the unmodified model's pass list (exact: matches [])
ENTRIES = ("prefill", "decode", "prefill_logits")


def position_passes() -> list:
    """The registered passes that handle positions (slot ``positions``) and have a plan hook, registry order."""
    from lcc.passes import REGISTRY

    return [d for d in REGISTRY.values() if "positions" in d.slots and d.plan is not None]


def method_name(pass_name: str, args: str) -> str:
    """``rope-scaling:method=ntk,...`` is ``ntk``; any other position pass is named by itself."""
    for part in args.split(","):
        key, _, value = part.partition("=")
        if key == "method" and value:
            return value
    return pass_name


def method_passes(length: int, trained_len: int) -> dict[str, tuple[str, ...]]:
    """Method name -> its pass list at ``length`` (``none`` always; the others only where their plan hook
    plans them, i.e. past ``trained_len``)."""
    from lcc.passes import check_passes

    out = {NONE: BASELINE}
    for d in position_passes():
        for args in d.plan(length, trained_len):
            spec = f"{d.name}:{args}" if args else d.name
            passes = (spec,)
            if "flash" in d.plan_with:
                try:
                    check_passes([spec, "flash"])
                    passes = (spec, "flash")
                except UsageError:
                    pass
            out.setdefault(method_name(d.name, args), passes)
    return out


def known_methods() -> list[str]:
    """Every method name the position passes plan at some length past the trained one (8x)."""
    return list(method_passes(8 * 1024, 1024))


def parse_methods(text: str | None) -> list[str]:
    """``none,ntk,...`` checked against :func:`known_methods` (default: all of them)."""
    known = known_methods()
    if text is None:
        return known
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise UsageError(f"--methods {text}: unknown method {', '.join(unknown) or '(none given)'}; "
                         f"methods: {', '.join(known)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Protocol:
    trials: int = 10  # passkey trials per depth
    windows: int = 2  # perplexity windows per length
    ppl_protocol: str = "first-window"

    def __post_init__(self):
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials}: give at least 1")
        if self.windows < 1:
            raise UsageError(f"--windows {self.windows}: give at least 1")

    @property
    def passkey_trials(self) -> int:
        from lcc.eval import DEPTHS

        return self.trials * len(DEPTHS)


@dataclass(frozen=True)
class Job:
    method: str
    passes: tuple[str, ...]
    length: int


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    n = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {n} thread{'s' * (n != 1)})"


def records_path(weights_hash: str, user: Path | None = None) -> Path:
    return Path(user or user_dir()) / f"{weights_hash}.json"


def user_records(weights_hash: str, model: str, trained_len: int, user: Path | None = None) -> Records:
    """The user's records file of these weights (checked), or an empty one."""
    path = records_path(weights_hash, user)
    if not path.is_file():
        return Records(model, weights_hash, trained_len, files=[str(path)])
    rec = read_file(path, weights_hash)
    if rec.trained_len != trained_len:
        raise UsageError(f"quality records {path} say trained length {rec.trained_len}, the model says "
                         f"{trained_len}; delete the file or re-measure with `lcc quality`")
    return rec


def _same(row: Row, passes, length: int, protocol: Protocol) -> bool:
    return (row.length == length and row.ppl_protocol == protocol.ppl_protocol
            and row.passkey_trials == protocol.passkey_trials and row.ppl is not None and row.passkey is not None
            and quality_key(row.passes, row.length) == quality_key(passes, length))


def pending(records: Records, lengths, methods, trained_len: int, protocol: Protocol) -> list[Job]:
    """The (method, passes, length) not yet measured with ``protocol``, baseline (none at trained_len) first."""
    wanted = [Job(NONE, BASELINE, trained_len)]
    for n in lengths:
        plans = method_passes(n, trained_len)
        wanted += [Job(m, plans[m], n) for m in methods if m in plans]
    jobs = []
    for job in dict.fromkeys(wanted):
        if not any(_same(r, job.passes, job.length, protocol) for r in records.rows):
            jobs.append(job)
    return jobs


def store(records: Records, row: Row, path: Path) -> None:
    """Replace any row of the same quality key, length and protocol by ``row``; write atomically."""
    key = quality_key(row.passes, row.length)
    records.rows = [r for r in records.rows if not (r.length == row.length and r.ppl_protocol == row.ppl_protocol
                                                     and quality_key(r.passes, r.length) == key)]
    records.merge([row])
    records.write(path)


def measure(loaded, jobs: list[Job], protocol: Protocol, text: str, device: str = "cpu", source: str = "",
            on_row: Callable[[Row], None] | None = None, progress: Callable[[], None] | None = None) -> list[Row]:
    """Measure ``jobs``: one capture per length, each method's passes applied to it; ``on_row`` after each."""
    import lcc
    from lcc.capture.export import capture
    from lcc.eval import capacity_for, eval_passkey, eval_ppl
    from lcc.passes import apply_passes, canonicalize, parse_pass

    rows, where, today = [], device_name(device), datetime.date.today().isoformat()
    for length in dict.fromkeys(j.length for j in jobs):
        canonical = canonicalize(capture(loaded, capacity_for(length), entries=ENTRIES))
        for job in (j for j in jobs if j.length == length):
            program = apply_passes(canonical, [parse_pass(p) for p in job.passes])
            if device != "cpu":
                from lcc.runtime import to_device

                program = to_device(program, device)
            ppl = eval_ppl(loaded, job.passes, [length], text, windows=protocol.windows, program=program)[0]
            pk = eval_passkey(loaded, job.passes, [length], trials=protocol.trials, program=program,
                              progress=progress)[0]
            row = Row(job.passes, length, ppl.metrics["ppl"], protocol.ppl_protocol, pk.metrics["accuracy"],
                      protocol.passkey_trials, where, "fp32", today, lcc.__version__, source)
            rows.append(row)
            if on_row:
                on_row(row)
            if progress:
                progress()
    return rows


def save_rows(loaded, rows: list[Row], user: Path | None = None) -> Path:
    """Store ``rows`` (measured elsewhere: bench scripts) in the user's records of ``loaded``'s weights, as
    ``lcc quality`` does; returns the file."""
    records = user_records(loaded.weights_hash, loaded.spec.model_id, loaded.spec.trained_len, user)
    path = records_path(loaded.weights_hash, user)
    for row in rows:
        store(records, row, path)
    return path
