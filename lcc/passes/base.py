"""Pass infrastructure: typed parameters, the registry, ``NAME[:KEY=VALUE,...]`` parsing, the manager.

A pass is a small function from program to program (as torch.fx's ``PassBase``);
the manager, not the pass, records stages.  A pass works on copies of the entry
graphs (``Program.copy_graphs``) that share the weights, so its input is never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lcc.capture.program import Program
from lcc.errors import UsageError


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    doc: str = ""
    choices: tuple = ()

    def parse(self, pass_name: str, text: str) -> Any:
        try:
            if self.type is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("1", "true", "yes")
            elif self.type is int:
                from lcc.lengths import parse_length
                value = parse_length(text) if text.strip().lower()[-1:] in "km" else int(text)
            else:
                value = self.type(text)
        except (ValueError, UsageError):
            raise UsageError(f"pass {pass_name}: {self.name}={text!r} is not a valid {self.type.__name__}; "
                             f"e.g. {self.name}={self.default}")
        if self.choices and value not in self.choices:
            raise UsageError(f"pass {pass_name}: {self.name}={text!r} is not one of {', '.join(map(str, self.choices))}")
        return value


@dataclass(frozen=True)
class PassResult:
    program: Program
    changed: bool


@dataclass(frozen=True)
class PassDef:
    """A registered pass: name, typed parameters, exactness, doc, and ``fn(program, **args) -> PassResult``."""

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

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


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
        if not args:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in args)

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    @property
    def definition(self) -> PassDef:
        return REGISTRY[self.name]

    def exact_for(self, length: int) -> bool:
        d = self.definition
        return d.exact or (d.exact_if is not None and d.exact_if(self.kwargs, length))


REGISTRY: dict[str, PassDef] = {}


def register(name: str, params: tuple[Param, ...] = (), exact: bool = True, doc: str = "", exact_if=None,
             shown=None):
    """Decorator registering ``fn(program, **args) -> PassResult`` as pass ``name``."""

    def wrap(fn):
        REGISTRY[name] = PassDef(name, tuple(params), exact, doc or (fn.__doc__ or "").strip().split("\n")[0], fn,
                                 exact_if, shown)
        return fn

    return wrap


def _split_items(text: str) -> list[str]:
    """Split ``a=1,b=0-5,12,c=x`` into items; a piece without ``=`` continues the previous value."""
    items: list[str] = []
    for piece in text.split(","):
        if "=" in piece or not items:
            items.append(piece)
        else:
            items[-1] += "," + piece
    return [i.strip() for i in items if i.strip()]


def parse_pass(text: str) -> PassSpec:
    """``NAME[:KEY=VALUE,...]`` -> PassSpec; an unknown name or parameter is a usage error."""
    name, _, rest = text.strip().partition(":")
    if name not in REGISTRY:
        raise UsageError(f"unknown pass {name!r}; passes: {', '.join(sorted(REGISTRY))} (see `lcc passes`)")
    d = REGISTRY[name]
    by_name = {p.name: p for p in d.params}
    args = d.defaults()
    for item in _split_items(rest):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in by_name:
            known = ", ".join(f"{p.name}={p.default}" for p in d.params) or "none"
            raise UsageError(f"pass {name}: unknown parameter {item!r}; parameters: {known}")
        args[key] = by_name[key].parse(name, value.strip())
    return PassSpec(name, tuple(args.items()))


def run_pass(program: Program, spec: PassSpec) -> PassResult:
    result = spec.definition.fn(program, **spec.kwargs)
    new = result.program
    if new is program or any(new.entries[k] is program.entries.get(k) for k in new.entries if result.changed):
        raise RuntimeError(f"pass {spec.name} returned its input graphs changed in place")
    stage = str(spec)
    return PassResult(new.with_entries(new.entries, passes=program.passes + (stage,), stage=stage), result.changed)


def apply_passes(program: Program, specs, on_stage: Callable[[Program], None] | None = None) -> Program:
    """Apply passes in order; ``on_stage`` sees each stage (the manager's record for ``lcc diff``)."""
    for spec in specs:
        if isinstance(spec, str):
            spec = parse_pass(spec)
        program = run_pass(program, spec).program
        if on_stage is not None:
            on_stage(program)
    return program
