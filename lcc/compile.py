"""``lcc compile``: plan -> apply -> check every stage -> lower -> an artifact directory.

The artifact holds ``lcc.json`` (the manifest of :mod:`lcc.artifact`: format and lcc
version, model id and weights hash, target length, plan, backend, cache layout,
entry-point signatures), the lowered files, the tokenizer, and a report (plan table,
pass-by-pass diff, plots).  It is written to a temporary directory next to the target
and renamed into place.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lcc import artifact
from lcc.artifact import Manifest, entry_signatures
from lcc.backends import get_backend
from lcc.capture import capture
from lcc.diff import diff as run_diff, logit_limit
from lcc.errors import CheckFailed, UsageError
from lcc.models.loader import LoadedModel
from lcc.outdir import check_out, install, make_tmp
from lcc.passes import PassSpec, apply_passes, canonicalize

CHECK_LEN = 256  # tokens of sample input for the stage checks
ENTRIES = ("prefill", "decode", "prefill_logits")  # what an artifact holds (prefill_logits: perplexity)
STAGES = ("plan", "check", "capture", "lower", "check lowered", "report")


class Stages:
    """Progress of a compile, stage by stage (``start`` a stage with its step count, ``advance`` it).

    This one is silent; :class:`lcc.ui.RichStages` draws a rich progress bar per stage.
    """

    def start(self, stage: str, total: int | None = None) -> None:
        pass

    def advance(self, stage: str, note: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class CompileResult:
    out: Path
    manifest: Manifest
    report: dict = field(default_factory=dict)


def _check_lowered(backend, out_dir, manifest, program, ids) -> dict:
    """The lowered prefill (and prefill_logits) against the program it came from, on the sample input."""
    loaded = backend.load(out_dir, manifest)
    max_abs, limit = 0.0, 0.0
    for name in ("prefill_logits", "prefill"):  # prefill last: its logits give top-1
        if name not in program.entries or name not in loaded.entries:
            continue
        with torch.inference_mode():
            want = program.entries[name](ids, *program.cache.empty())[0]
            got = torch.as_tensor(loaded.entries[name](ids, *program.cache.empty())[0])
        max_abs, limit = max(max_abs, float((got - want).abs().max())), max(limit, logit_limit(want))
    return {"name": f"lowered:{backend.name}", "exact": True, "max_abs": max_abs, "limit": limit,
            "ok": max_abs <= limit, "top1": float((got.argmax(-1) == want.argmax(-1)).float().mean())}


def compile_model(loaded: LoadedModel, target_len: int, backend_name: str, passes: list[PassSpec] | None,
                  out: Path, force: bool = False, device: str = "cpu", plan_fn: Callable | None = None,
                  progress: Stages | None = None) -> CompileResult:
    """Plan (unless ``passes`` are given) for ``device`` (a hardware profile), check, lower, write ``out``."""
    stages = progress or Stages()
    out = check_out(out, force)
    backend = get_backend(backend_name)
    plan = {"source": "user", "passes": [str(p) for p in passes or []], "reason": "passes given on the command line",
            "device": device}
    if passes is None:
        if plan_fn is None:
            raise UsageError("no planner is available in this installation: give the passes with --pass")
        stages.start("plan", 1)
        plan, passes = plan_fn(loaded, target_len, device)
        stages.advance("plan")
    stages.start("check", 3 + len(passes))
    reports = run_diff(loaded, passes, min(CHECK_LEN, target_len), progress=lambda s: stages.advance("check", s))
    failed = [f"{r.name} (max abs logit error {r.vs_prev_max_abs:.2e})" for r in reports if not r.ok]
    if failed:
        raise CheckFailed(f"exact stages out of tolerance on a {min(CHECK_LEN, target_len)}-token sample: "
                          f"{', '.join(failed)}; `lcc diff MODEL --pass ...` shows every stage")
    stages.start("capture", 2 + len(passes))
    base = canonicalize(capture(loaded, capacity=target_len, entries=ENTRIES))
    stages.advance("capture", "canonical")
    program = apply_passes(base, passes, on_stage=lambda p: stages.advance("capture", p.stage))
    stages.advance("capture", "cost")
    tmp = make_tmp(out)
    try:
        stages.start("lower", None)
        lowered = backend.lower(program, tmp, entries=ENTRIES, progress=lambda s: stages.advance("lower", s))
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        manifest = Manifest(
            model={"id": loaded.spec.model_id, "weights_hash": loaded.weights_hash, "spec": loaded.spec.to_dict()},
            target_len=target_len,
            backend=backend.name,
            plan=plan,
            cache=program.cache.to_dict(),
            entries=entry_signatures(program),
            files=sorted(lowered.files),
            lowering={"native": lowered.native, "fallbacks": sorted(lowered.fallbacks), "notes": lowered.notes},
            checks=[{"stage": r.name, "exact": r.exact, "ok": r.ok} for r in reports],
        )
        manifest.write(tmp)
        stages.start("check lowered", 1)
        from lcc.data import sample_ids

        ids = torch.tensor([sample_ids(loaded.tokenizer, min(CHECK_LEN, target_len), loaded.spec.vocab)])
        lowered_check = _check_lowered(backend, tmp, manifest, program, ids)
        stages.advance("check lowered")
        stages.start("report", 2)
        report = {"stages": [r.to_dict() for r in reports], "lowered": lowered_check, "plan": plan,
                  "cost": cost_curves(base, program, passes, target_len, device, tmp / "cost.png"),
                  "timings": lowered.timings}
        stages.advance("report", "cost.png")
        from lcc.report import write_report

        write_report(tmp, manifest, report)
        stages.advance("report", "report.md")
        seal(backend, tmp)
        stages.finish()
        install(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CompileResult(out, manifest, report)


def curve_lengths(target_len: int, lowest: int = 1024) -> list[int]:
    """Powers of two from ``lowest`` up to the target (and the target itself)."""
    n, out = min(lowest, target_len), []
    while n < target_len:
        out.append(n)
        n *= 2
    return out + [target_len]


def cost_curves(base, program, passes, target_len: int, device: str, png: Path) -> dict | None:
    """Predicted memory and prefill time against length for the plan and for no passes (lcc.cost); the PNG.

    ``None`` when the cost model is not installed or the device profile is unknown.
    """
    try:
        from lcc.cost import load_profile, plot_cost, program_cost
        from lcc.cost.planner import BUDGET_FRACTION
    except ImportError:
        return None
    profile = load_profile(device)
    lengths = curve_lengths(target_len)
    label = " + ".join(str(p) for p in passes) or "no passes"
    curves = {label: [program_cost(program, profile.kind).evaluate(n, profile) for n in lengths]}
    if passes:
        bare = program_cost(base, profile.kind)
        curves["no passes"] = [bare.evaluate(n, profile) for n in lengths]
    plot_cost(curves, str(png), f"{program.spec.model_id}: predicted cost on {profile.name}",
              BUDGET_FRACTION * profile.memory_bytes)
    return {"device": profile.name, "lengths": lengths,
            "curves": {k: [{"memory": e.memory, "prefill_time": e.prefill_time} for e in v]
                       for k, v in curves.items()}}


def seal(backend, out_dir: Path) -> None:
    """The last write of a compile: ``checksums.json`` over every file, and the native files recorded as built
    on this machine (``$LCC_CACHE/built.json``), so that ``load_artifact`` runs them without --trust-native."""
    from lcc.integrity import record_built, write_checksums

    write_checksums(out_dir)
    native_files = getattr(backend, "native_files", None)
    if native_files is not None:
        record_built(out_dir, native_files(out_dir))


def load_artifact(path: Path, trust_native: bool = False):
    """(manifest, runnable with .entries, tokenizer) of a compiled artifact directory.

    Before anything of it is loaded: the manifest's format and lcc version, every file against
    ``checksums.json`` and, for native code, that this machine built it (or ``trust_native``)."""
    from lcc.integrity import check_native, verify

    path = Path(path)
    manifest = artifact.load(path)
    table = verify(path)
    backend = get_backend(manifest.backend)
    native_files = getattr(backend, "native_files", None)
    if native_files is not None:
        check_native(path, native_files(path), table, trust_native)
    runnable = backend.load(path, manifest)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return manifest, runnable, tokenizer
