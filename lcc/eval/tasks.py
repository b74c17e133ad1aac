"""The ``--task`` strings of ``lcc eval``, parsed once by :mod:`lcc.spec` into a :class:`Task`.

``passkey``; ``ppl[:last=K]`` (K = 0: every position of the first windows; K > 0: the final K
tokens of the text, the same targets at every length, bojone/rerope's protocol);
``niah[:needles=N,keys=K,values=V,queries=Q]`` and ``vt[:chains=C,hops=H]``, RULER's
needle-in-a-haystack and variable-tracking tasks (Hsieh et al. 2024; :mod:`lcc.eval.ruler`).
``niah``: K keys carry V values each (one needle per value), the other N - K*V needles carry
distractor keys; Q of the K keys are asked for.  Single: the defaults; multi-key:
``needles=4,keys=4``; multi-value: ``needles=4,values=4``; multi-query: ``needles=4,keys=4,queries=4``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lcc.spec import Field, SpecError, format_spec, parse

TASKS = {
    "passkey": (),
    "ppl": (Field("last", int, 0, "score the text's final K tokens at every length (0: the first windows)",
                  low=0, high=1 << 24),),
    "niah": (Field("needles", int, 1, "needle sentences in all, at least keys x values", low=1, high=1000),
             Field("keys", int, 1, "keys that carry the values; the other needles are distractors", low=1),
             Field("values", int, 1, "values (needles) per key", low=1),
             Field("queries", int, 1, "keys asked for; every value of each must be returned", low=1)),
    "vt": (Field("chains", int, 1, "chains of assignments; the first is asked for, the others distract",
                 low=1, high=1000),
           Field("hops", int, 4, "assignments after the first in each chain", low=1, high=1000)),
}


@dataclass(frozen=True)
class Task:
    """A parsed ``--task`` value: the task name and its arguments with defaults filled in."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def parse(text: str) -> "Task":
        """``niah:needles=4,keys=4`` -> Task; an unknown task or parameter, or values out of range: SpecError."""
        name, args = parse(text, TASKS, "task")
        what = f"task {name}"
        if name == "niah":
            if args["queries"] > args["keys"]:
                raise SpecError(f"{what}: queries={args['queries']} is more than keys={args['keys']}: "
                                f"only keys that carry values can be asked for; give keys >= {args['queries']}")
            if args["keys"] * args["values"] > args["needles"]:
                need = args["keys"] * args["values"]
                raise SpecError(f"{what}: needles={args['needles']} cannot hold keys={args['keys']} x "
                                f"values={args['values']} = {need} needles; give needles >= {need} "
                                f"(needles beyond keys x values carry distractor keys)")
        return Task(name, tuple(args.items()))

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    def __str__(self) -> str:
        """The spec string with the arguments that differ from their defaults (``ppl``, ``niah:needles=4``)."""
        defaults = {f.name: f.default for f in TASKS[self.name]}
        return format_spec(self.name, {k: v for k, v in self.args if v != defaults[k]})
