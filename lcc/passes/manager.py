"""The pass manager: a pass list checked up front against the passes' declarations, then run stage by stage.

:func:`check_passes` refuses, with one line naming both passes, a list in which two passes
share a slot without one declaring that it composes with the other, a pass placed after
one it must precede, a ``last`` pass that is not last, or a pass whose ``requires`` refuses
the input program.  :func:`apply_passes` then runs them (torch.fx ``pass_manager.py``):
a pass that fails is re-raised with its name and the passes that ran before it.
"""

from __future__ import annotations

from typing import Callable

from lcc.capture.program import Program
from lcc.errors import UsageError
from lcc.passes.base import PassResult, PassSpec, parse_pass


def _conflict(first: PassSpec, second: PassSpec) -> str | None:
    a, b = first.definition, second.definition
    if a.name in b.before:
        return f"pass {second} must come before {first}; reorder them"
    shared = sorted(a.slots & b.slots)
    if shared and not a.composes_with(b):
        again = " twice" if a.name == b.name else ""
        return (f"passes {first} and {second} conflict: both change the {' and '.join(shared)}{again} and neither "
                f"declares it composes with the other; apply one of them")
    return None


def check_passes(specs, program: Program | None = None) -> list[PassSpec]:
    """The parsed list, or a UsageError (one line) for a list that cannot compose; see the module doc."""
    parsed = [parse_pass(s) if isinstance(s, str) else s for s in specs]
    for i, spec in enumerate(parsed):
        for earlier in parsed[:i]:
            reason = _conflict(earlier, spec)
            if reason:
                raise UsageError(reason)
        d = spec.definition
        if d.last and i != len(parsed) - 1:
            raise UsageError(f"pass {spec} must be the last pass; {parsed[-1]} comes after it")
        if program is not None and d.requires is not None:
            reason = d.requires(program)
            if reason:
                raise UsageError(f"pass {spec}: {reason}")
    return parsed


def run_pass(program: Program, spec: PassSpec) -> PassResult:
    result = spec.definition.fn(program, **spec.kwargs)
    new = result.program
    if new is program or any(new.entries[k] is program.entries.get(k) for k in new.entries if result.changed):
        raise RuntimeError(f"pass {spec.name} returned its input graphs changed in place")
    stage = str(spec)
    return PassResult(new.with_entries(new.entries, passes=program.passes + (stage,), stage=stage), result.changed)


def apply_passes(program: Program, specs, on_stage: Callable[[Program], None] | None = None,
                 done: Program | None = None) -> Program:
    """Check the list, then apply the passes in order; ``on_stage`` sees each stage (``lcc diff``'s record).

    ``done``: ``program`` after the first passes of ``specs`` already (the planner prices ``[X]`` before
    ``[X, Y]``): the list is still checked against ``program``, and only the passes after those run."""
    parsed = check_passes(specs, program)
    ran: list[str] = []
    if done is not None:
        ran = list(done.passes[len(program.passes):])
        if done.passes[:len(program.passes)] != program.passes or ran != [str(s) for s in parsed[:len(ran)]]:
            whole = [*program.passes, *(str(s) for s in parsed)]
            raise ValueError(f"apply_passes: the passes done, {list(done.passes)}, are not a start of {whole}")
        program, parsed = done, parsed[len(ran):]
    for spec in parsed:
        try:
            program = run_pass(program, spec).program
        except Exception as e:
            raise _with_stages(e, spec, ran) from e
        ran.append(str(spec))
        if on_stage is not None:
            on_stage(program)
    return program


def _with_stages(e: Exception, spec: PassSpec, ran: list[str]) -> Exception:
    """``e`` again (same type where it can be rebuilt from one message), naming the pass and the stages before it."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not text.startswith((spec.name, f"pass {spec.name}")):
        text = f"pass {spec}: {text}"
    if ran:
        text += f" (after {', '.join(ran)})"
    try:
        return type(e)(text)
    except Exception:
        return RuntimeError(text)
