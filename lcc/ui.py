"""The command line's presentation: rich consoles, tables, progress bars, byte / time / count formatting.

Commands (``lcc/cli.py``, ``lcc/cost/cli.py``) compute; this module draws.  Tables go to stdout
(``out``, 160 columns when stdout is not a terminal, so piped output is stable); spinners and
progress bars go to stderr (``err``).
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_seconds(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.0f} us"
    if t < 1:
        return f"{t * 1e3:.1f} ms"
    if t < 120:
        return f"{t:.2f} s"
    return f"{t / 60:.1f} min"


def human_count(n: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def optional(x, fmt) -> str:
    """``fmt(x)``, or ``-`` when there is no value."""
    return "-" if x is None else fmt(x)


def table(title: str, columns=(), justify: str = "left", **kwargs) -> Table:
    """A rich table with these column headers, all justified ``justify``."""
    t = Table(title=title, **kwargs)
    for col in columns:
        t.add_column(col, justify=justify)
    return t


def status(text: str):
    """A spinner on stderr while a slow step runs (``with status("loading"):``)."""
    return err.status(text, spinner="dots")


def counter(**kwargs) -> Progress:
    """A transient progress bar on stderr for a loop of known length (eval)."""
    return Progress(console=err, transient=True, **kwargs)


def step_bar() -> Progress:
    """A transient bar with its description, count and elapsed time on stderr (train-memory)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True)


class RichStages:
    """One rich progress bar per compile stage, each completed when the next one starts.

    Draws :class:`lcc.compile.Stages`' calls (``start``, ``advance``, ``finish``).
    """

    def __init__(self, console=None):
        self.bar = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[note]}"), console=console)
        self.tasks: dict[str, int] = {}
        self.current: str | None = None

    def __enter__(self):
        return self  # the bar starts with the first stage: an empty one would print a blank line on stop

    def __exit__(self, *exc):
        if self.tasks:
            self.bar.stop()

    def _close(self) -> None:
        if self.current is not None:
            task = self.bar.tasks[self.tasks[self.current]]
            self.bar.update(task.id, total=max(task.completed, task.total or 0, 1),
                            completed=max(task.completed, task.total or 0, 1), note="")

    def start(self, stage: str, total: int | None = None) -> None:
        self._close()
        if not self.tasks:
            self.bar.start()
        self.current = stage
        self.tasks[stage] = self.bar.add_task(stage, total=total, note="")

    def advance(self, stage: str, note: str = "") -> None:
        self.bar.update(self.tasks[stage], advance=1, note=note)

    def finish(self) -> None:
        self._close()
        self.current = None
