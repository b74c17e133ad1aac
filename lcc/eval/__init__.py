"""``lcc eval``: passkey retrieval, RULER's niah and vt, and perplexity at given lengths, through a
(rewritten) program or an artifact.

A generated trial at length L prompts with L minus the tokens it generates (:mod:`lcc.eval.passkey`,
:mod:`lcc.eval.ruler`), so lengths up to an artifact's capacity (its target length) fit it;
perplexity windows feed L tokens, scored through the ``prefill_logits`` entry
(:mod:`lcc.eval.ppl`; the task strings: :mod:`lcc.eval.tasks`).
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

    need = ("prefill_logits",) if task == "ppl" else ("prefill", "decode")
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


def prepare(loaded: LoadedModel, passes, max_len: int, entries, device: str = "cpu",
            cache_dtype: str | None = None) -> object:
    """The captured, canonical program with ``passes`` applied, a cache for ``max_len`` (of ``cache_dtype``, by
    default the model's), on ``device``."""
    specs = [parse_pass(p) if isinstance(p, str) else p for p in passes]
    program = canonicalize(capture(loaded, capacity_for(max_len), entries=entries, cache_dtype=cache_dtype))
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


def eval_ruler(loaded: LoadedModel, passes, lengths, task: str, text: str, trials: int = 10,
               progress: Callable[[], None] | None = None, device: str = "cpu", program=None,
               **params) -> list[EvalResult]:
    """RULER's ``task`` (``niah`` or ``vt``, ``params`` as :class:`lcc.eval.tasks.Task` parses them) at each
    length over seeded trials 0 .. trials - 1, filler from ``text``.  ``accuracy``: the fraction of trials
    whose answer holds every expected string (exact match); ``score``: RULER's string_match_all mean."""
    from lcc.eval.ruler import BUILDERS, Haystack, run_trial

    program = program or prepare(loaded, passes, max(lengths), ("prefill", "decode"), device)
    haystack = Haystack(loaded.tokenizer, text)
    results = []
    for length in lengths:
        scores = []
        for seed in range(trials):
            trial = BUILDERS[task](loaded.tokenizer, haystack, length, seed, **params)
            scores.append(run_trial(program, loaded.tokenizer, trial)[0])
            if progress:
                progress()
        results.append(EvalResult(length, {"accuracy": sum(s == 1.0 for s in scores) / trials,
                                           "score": sum(scores) / trials, "trials": trials}))
    return results


def eval_ppl(loaded: LoadedModel, passes, lengths, text: str, windows: int = 2,
             progress: Callable[[], None] | None = None, device: str = "cpu",
             program=None, last: int = 0) -> list[EvalResult]:
    """Perplexity at each length: the first ``windows`` windows, or with ``last`` > 0 the text's final ``last``
    tokens scored with L tokens of context (:mod:`lcc.eval.ppl`); ``protocol`` names which."""
    import math

    from lcc.eval.ppl import perplexity, protocol_name

    program = program or prepare(loaded, passes, max(lengths), ("prefill_logits",), device)
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    results = []
    for length in lengths:
        ppl, n = perplexity(program, ids, length, windows, last=last)
        if progress:
            progress()
        count = windows if last else n // (length - 1)
        results.append(EvalResult(length, {"ppl": ppl, "loss": math.log(ppl), "tokens": n, "windows": count,
                                           "protocol": protocol_name(last)}))
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
