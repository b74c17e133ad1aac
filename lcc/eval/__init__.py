"""``lcc eval``: passkey retrieval and perplexity at given lengths, through a (rewritten) program."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lcc.capture.export import capture
from lcc.models.loader import LoadedModel
from lcc.passes import apply_passes, canonicalize, parse_pass

DEPTHS = (0.1, 0.5, 0.9)


@dataclass
class EvalResult:
    length: int
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"length": self.length, **self.metrics}


def capacity_for(max_len: int) -> int:
    """The cache capacity an evaluation up to ``max_len`` tokens captures: room for the answer, 64-aligned."""
    return -(-(max_len + 16) // 64) * 64


def prepare(loaded: LoadedModel, passes, max_len: int, entries, device: str = "cpu") -> object:
    specs = [parse_pass(p) if isinstance(p, str) else p for p in passes]
    program = canonicalize(capture(loaded, capacity_for(max_len), entries=entries))
    program = apply_passes(program, specs)
    if device != "cpu":
        from lcc.runtime import to_device

        program = to_device(program, device)
    return program


def eval_passkey(loaded: LoadedModel, passes, lengths, trials: int = 10, depths=DEPTHS,
                 progress: Callable[[], None] | None = None, device: str = "cpu",
                 program=None) -> list[EvalResult]:
    """``program`` (already rewritten and placed) skips the capture; else ``passes`` are applied here."""
    from lcc.eval.passkey import build_prompt, run_trial

    program = program or prepare(loaded, passes, max(lengths), ("prefill", "decode"), device)
    results = []
    for length in lengths:
        per_depth = {}
        for depth in depths:
            hits = 0
            for seed in range(trials):
                ok, _ = run_trial(program, loaded.tokenizer, build_prompt(loaded.tokenizer, length, depth, seed))
                hits += ok
                if progress:
                    progress()
            per_depth[str(depth)] = hits / trials
        acc = sum(per_depth.values()) / len(per_depth)
        results.append(EvalResult(length, {"accuracy": acc, "by_depth": per_depth, "trials": trials}))
    return results


def eval_ppl(loaded: LoadedModel, passes, lengths, text: str, windows: int = 2,
             progress: Callable[[], None] | None = None, device: str = "cpu",
             program=None) -> list[EvalResult]:
    from lcc.eval.ppl import perplexity

    program = program or prepare(loaded, passes, max(lengths), ("prefill_logits",), device)
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    results = []
    for length in lengths:
        ppl, n = perplexity(program, ids, length, windows)
        if progress:
            progress()
        results.append(EvalResult(length, {"ppl": ppl, "tokens": n, "windows": n // (length - 1)}))
    return results


def plot(results_by_label: dict[str, list[EvalResult]], metric: str, path: str, title: str) -> None:
    """One line per label: ``metric`` against length (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, results in results_by_label.items():
        ax.plot([r.length for r in results], [r.metrics[metric] for r in results], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel(metric)
    if metric == "ppl":
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
