"""``lcc eval``: passkey retrieval and perplexity at given lengths, through a (rewritten) program or an artifact.

A passkey trial at length L prompts with L - ANSWER_TOKENS tokens (:mod:`lcc.eval.passkey`), so
lengths up to an artifact's capacity (its target length) fit it; perplexity windows are L
tokens, scored through the ``prefill_logits`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass
class ArtifactProgram:
    """A compiled artifact as eval runs it: its loaded entries, cache layout and tokenizer (inputs on the CPU)."""

    path: Path
    manifest: object  # lcc.artifact.Manifest
    entries: dict
    cache: object  # CacheLayout
    tokenizer: object
    meta: dict = field(default_factory=lambda: {"device": "cpu"})

    @property
    def target_len(self) -> int:
        """The length it was compiled for: the longest evaluation it takes (its cache capacity if plain)."""
        return self.manifest.target_len


def is_artifact(path) -> bool:
    from lcc.artifact import FILE

    return (Path(path) / FILE).is_file()


def load_artifact_program(path, trust_native: bool = False) -> ArtifactProgram:
    """The artifact directory ``path`` loaded by its own backend, ready for :func:`eval_passkey` / :func:`eval_ppl`."""
    from lcc.capture.program import CacheLayout
    from lcc.compile import load_artifact

    manifest, runnable, tokenizer = load_artifact(path, trust_native=trust_native)
    if tokenizer is None:
        from lcc.errors import UsageError

        raise UsageError(f"{path} has no tokenizer files: recompile from a model that has a tokenizer")
    return ArtifactProgram(Path(path), manifest, dict(runnable.entries), CacheLayout.from_dict(manifest.cache),
                           tokenizer)


def check_fits(program: ArtifactProgram, task: str, lengths) -> None:
    """Usage error unless the artifact holds the entries ``task`` needs and every length fits its target length."""
    from lcc.errors import UsageError

    need = ("prefill", "decode") if task == "passkey" else ("prefill_logits",)
    missing = [e for e in need if e not in program.entries]
    if missing:
        raise UsageError(f"{program.path} has no {', '.join(missing)} entry (compiled by an older lcc?): "
                         f"recompile it with `lcc compile` to evaluate {task}")
    too_long = [n for n in lengths if n > program.target_len]
    if too_long:
        raise UsageError(f"--lengths {max(too_long)}: the artifact was compiled for {program.target_len} tokens; "
                         f"evaluate at most {program.target_len} or recompile with a larger --target-len")


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
    """``program`` (already rewritten and placed, or an artifact) skips the capture; else ``passes`` are
    applied here.  ``loaded`` gives the tokenizer."""
    from lcc.eval.passkey import build_prompt, prompt_length, run_trial

    program = program or prepare(loaded, passes, max(lengths), ("prefill", "decode"), device)
    results = []
    for length in lengths:
        per_depth = {}
        for depth in depths:
            hits = 0
            for seed in range(trials):
                prompt = build_prompt(loaded.tokenizer, prompt_length(length), depth, seed)
                ok, _ = run_trial(program, loaded.tokenizer, prompt)
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
