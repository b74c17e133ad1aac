"""Cost curves: memory and prefill time against length, one line per pass list (PNG, matplotlib Agg)."""

from __future__ import annotations

import os
import tempfile


def plot_cost(curves: dict[str, list], path: str, title: str = "", budget: float | None = None) -> str:
    """``curves``: label -> [Evaluation, ...] (ascending lengths).  Writes ``path`` atomically; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    for label, evs in curves.items():
        xs = [e.length for e in evs]
        ax_mem.plot(xs, [e.memory / 2**30 for e in evs], marker="o", label=label)
        if all(e.prefill_time is not None for e in evs):
            ax_time.plot(xs, [e.prefill_time for e in evs], marker="o", label=label)
    if budget:
        ax_mem.axhline(budget / 2**30, color="red", linestyle="--", linewidth=1, label="memory budget")
    for ax, ylabel in ((ax_mem, "peak memory (GiB)"), (ax_time, "prefill time (s, roofline)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
