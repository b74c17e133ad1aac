"""The one parser of ``name:key=value,...`` strings: passes, masks, kernel algos, RoPE variants, KV formats, tasks.

Each kind of string declares its parameters once as :class:`Field` records (type, default,
choices, inclusive bounds); :func:`parse` splits the text, checks every value and fills in
the defaults, and the caller builds its frozen dataclass from the result. A bad string is a
:class:`SpecError`: one line saying what is wrong and what would be right. It is both a
``UsageError`` (the command line prints it and exits 2) and a ``ValueError`` (what ops raise
inside), so the same parser serves the edge and the ops.

A value may contain commas (``layers=0-5,12``): a piece without ``=`` continues the value
before it. Integers accept lengths (``4k`` = 4096, ``1m``); floats must be finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from lcc.errors import UsageError


class SpecError(UsageError):
    """A ``name:key=value`` string that does not parse; the message says what would (a ValueError too)."""


@dataclass(frozen=True)
class Field:
    """One parameter of a spec string."""

    name: str
    type: type
    default: Any
    doc: str = ""
    choices: tuple = ()
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None

    def parse(self, what: str, text: str) -> Any:
        """``text`` as this field's value; ``what`` names the spec in the error (e.g. ``pass flash``)."""
        text = text.strip()
        try:
            if self.type is bool:
                if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("1", "true", "yes")
            elif self.type is int:
                from lcc.lengths import parse_length

                value = parse_length(text) if text.lower()[-1:] in ("k", "m") else int(text)
            elif self.type is float:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError(text)
            else:
                value = self.type(text)
        except (ValueError, UsageError):
            raise SpecError(f"{what}: {self.name}={text!r} is not a valid {self._kind()}; "
                            f"e.g. {self.name}={self.default}")
        self.check(what, value)
        return value

    def check(self, what: str, value: Any) -> None:
        """Choices and bounds (also for values given as Python objects rather than text)."""
        if self.choices and value not in self.choices:
            raise SpecError(f"{what}: {self.name}={value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.type in (int, float) and isinstance(value, (int, float)):
            if not math.isfinite(value) or (self.low is not None and value < self.low) or (
                    self.high is not None and value > self.high):
                raise SpecError(f"{what}: {self.name}={value} is out of range; it must be {self._range()}")

    def _kind(self) -> str:
        return {bool: "boolean (true/false)", int: "integer", float: "finite number"}.get(self.type, self.type.__name__)

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f">= {self.low:g}"
        return f"<= {self.high:g}"


def split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``name:a=1,b=0-5,12`` -> ("name", [("a", "1"), ("b", "0-5,12")]); a piece without ``=`` continues."""
    name, _, rest = (text or "").strip().partition(":")
    items: list[str] = []
    for piece in rest.split(","):
        if "=" in piece or not items:
            items.append(piece)
        else:
            items[-1] += "," + piece
    pairs = []
    for item in (i.strip() for i in items):
        if item:
            key, eq, value = item.partition("=")
            pairs.append((key.strip(), value.strip() if eq else None))
    return name.strip(), pairs


def parse_args(what: str, fields: Iterable[Field], pairs: Iterable[tuple[str, str | None]]) -> dict[str, Any]:
    """Values for ``fields`` from ``(key, text)`` pairs, defaults filled in; unknown keys are an error."""
    by_name = {f.name: f for f in fields}
    args = {f.name: f.default for f in by_name.values()}
    for key, text in pairs:
        if text is None or key not in by_name:
            known = ", ".join(f"{f.name}={f.default}" for f in by_name.values()) or "none"
            shown = key if text is None else f"{key}={text}"
            raise SpecError(f"{what}: unknown parameter {shown!r}; parameters: {known}")
        args[key] = by_name[key].parse(what, text)
    return args


def parse(text: str, kinds: Mapping[str, Iterable[Field]], what: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,...`` -> (name, args) for one of ``kinds`` (name -> its fields)."""
    name, pairs = split(text)
    if name not in kinds:
        raise SpecError(f"unknown {what} {name!r}; known: {', '.join(sorted(kinds))}")
    return name, parse_args(f"{what} {name}", kinds[name], pairs)


def format_spec(name: str, args: Mapping[str, Any]) -> str:
    """The inverse of :func:`parse`: ``name`` or ``name:key=value,...`` in the given order."""
    if not args:
        return name
    return name + ":" + ",".join(f"{k}={v}" for k, v in args.items())
