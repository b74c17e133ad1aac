"""Pass infrastructure: the registry, each pass's declared composition, ``NAME[:KEY=VALUE,...]`` parsing, the manager.

A pass is a small function from program to program (as torch.fx's ``PassBase``); the
manager, not the pass, records stages.  A pass works on copies of the entry graphs
(``Program.copy_graphs``) that share the weights, so its input is never mutated.
Each pass declares how it composes (torch.fx ``pass_base.py`` / ``pass_manager.py``):
``requires(program) -> reason | None``, the ``slots`` it occupies (:data:`SLOTS`), the
passes it ``composes`` with inside a shared slot, the passes it must run ``before``, and
whether it must be ``last``.  :func:`apply_passes` checks a whole list up front
(:func:`check_passes`) and re-raises a failing pass with the stages that ran before it.
Parameters are :class:`lcc.spec.Field` records (``Param``), with bounds on every number.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from lcc import spec as specs
from lcc.capture.program import Program
from lcc.errors import UsageError

Param = specs.Field  # a pass parameter: name, type, default, doc, choices, low, high
MAX_TOKENS = 1 << 30  # upper bound of every length-like pass parameter
SLOTS = ("positions", "attention", "cache", "segments", "distribution")


@dataclass(frozen=True)
class PassResult:
    program: Program
    changed: bool


def _plan_defaults(target_len: int, trained_len: int) -> list[str]:
    return [""]


@dataclass(frozen=True)
class PassDef:
    """A registered pass: name, typed parameters, exactness, doc, ``fn(program, **args) -> PassResult``, composition."""

    name: str
    params: tuple[Param, ...]
    exact: bool
    doc: str
    fn: Callable[..., PassResult]
    # exact_if(args, length) -> True when an approximate pass is exact for inputs of this length
    exact_if: Callable[[dict, int], bool] | None = None
    # shown(args) -> the parameter names that matter for these args (the stage name lists only those;
    # the others keep their defaults, so the name still parses back to the same spec)
    shown: Callable[[dict], set] | None = None
    slots: frozenset = frozenset()  # among SLOTS: what of the program this pass changes
    composes: frozenset = frozenset()  # passes that may share a slot with this one (its own name: may repeat)
    before: frozenset = frozenset()  # passes that, in the same list, must come after this one
    last: bool = False  # must be the last pass of a list
    requires: Callable[[Program], str | None] | None = None  # precondition on the input program
    # plan(target_len) -> argument strings the planner proposes (None: never proposed on its own)
    # plan(target_len, trained_len) -> the argument strings the planner tries (None: never planned)
    plan: Callable[[int, int], list[str]] | None = _plan_defaults
    plan_with: tuple[str, ...] = ("flash",)  # passes the planner also tries after this one (if they compose)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def composes_with(self, other: "PassDef") -> bool:
        return other.name in self.composes or self.name in other.composes


@dataclass(frozen=True)
class PassSpec:
    """A parsed ``--pass`` value: the pass name and its arguments with defaults filled in."""

    name: str
    args: tuple[tuple[str, Any], ...] = field(default=())

    def __str__(self) -> str:
        args = self.args
        d = REGISTRY.get(self.name)
        if d is not None and d.shown is not None:
            keep = d.shown(dict(args))
            args = tuple((k, v) for k, v in args if k in keep)
        return specs.format_spec(self.name, dict(args))

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    @property
    def definition(self) -> PassDef:
        return REGISTRY[self.name]

    def exact_for(self, length: int, trained_len: int | None = None) -> bool:
        """Whether the pass leaves outputs unchanged at ``length``; an ``exact_if`` that takes a third argument
        also gets the model's trained length (``auto`` parameters resolve from it, as Self-Extend's do)."""
        d = self.definition
        if d.exact or d.exact_if is None:
            return d.exact
        if trained_len is not None and len(inspect.signature(d.exact_if).parameters) >= 3:
            return d.exact_if(self.kwargs, length, trained_len)
        return d.exact_if(self.kwargs, length)


REGISTRY: dict[str, PassDef] = {}


def register(name: str, params: tuple[Param, ...] = (), exact: bool = True, doc: str = "", exact_if=None,
             shown=None, slots=(), composes=(), before=(), last: bool = False, requires=None,
             plan=_plan_defaults, plan_with=("flash",)):
    """Decorator registering ``fn(program, **args) -> PassResult`` as pass ``name`` with its composition."""
    unknown = set(slots) - set(SLOTS)
    if unknown:
        raise ValueError(f"pass {name}: unknown slot(s) {sorted(unknown)}; slots: {', '.join(SLOTS)}")

    def wrap(fn):
        REGISTRY[name] = PassDef(name, tuple(params), exact, doc or (fn.__doc__ or "").strip().split("\n")[0], fn,
                                 exact_if, shown, frozenset(slots), frozenset(composes), frozenset(before), last,
                                 requires, plan, tuple(plan_with))
        return fn

    return wrap


def parse_pass(text: str) -> PassSpec:
    """``NAME[:KEY=VALUE,...]`` -> PassSpec; an unknown name or a bad parameter is a :class:`lcc.spec.SpecError`."""
    name, pairs = specs.split(text)
    if name not in REGISTRY:
        raise specs.SpecError(f"unknown pass {name!r}; passes: {', '.join(sorted(REGISTRY))} (see `lcc passes`)")
    args = specs.parse_args(f"pass {name}", REGISTRY[name].params, pairs)
    return PassSpec(name, tuple(args.items()))
