"""``lcc compile``: plan -> apply -> check every stage -> lower -> an artifact directory.

The artifact holds ``lcc.json`` (the manifest of :mod:`lcc.artifact`: format and lcc
version, model id and weights hash, target length, plan, backend, cache layout,
entry-point signatures), the lowered files, the tokenizer, and a report (plan table,
pass-by-pass diff, plots).  It is written to a temporary directory next to the target
and renamed into place.  With ``cache``, an identical earlier compile's artifact is taken
from the compile cache instead (:mod:`lcc.compile_cache`); each stage's time goes to
``report.json`` (``stage_seconds``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lcc import artifact
from lcc.artifact import Manifest, entry_signatures
from lcc.backends import check_dtype, get_backend
from lcc.capture import capture
from lcc.capture.program import generate_code, graphs_not_run
from lcc.diff import Checked, check_stages, logit_limit
from lcc.distributed import is_context_parallel
from lcc.errors import CheckFailed, UsageError
from lcc.models.loader import LoadedModel
from lcc.outdir import check_out, install, make_tmp
from lcc.passes import PassSpec, apply_passes, canonicalize
from lcc.runtime import device_of

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


class _Timed(Stages):
    """Passes a compile's progress on to ``inner`` and keeps each stage's wall time in ``times`` and the CPU time
    of the process (all its threads) in ``cpu_times`` (seconds): on a shared machine the CPU time is the figure
    other work disturbs less."""

    def __init__(self, inner: Stages):
        self.inner, self.times, self.cpu_times = inner, {}, {}
        self._stage, self._t0, self._c0 = None, 0.0, 0.0

    def _stop(self) -> None:
        if self._stage is not None:
            self.times[self._stage] = round(time.perf_counter() - self._t0, 3)
            self.cpu_times[self._stage] = round(time.process_time() - self._c0, 3)
            self._stage = None

    def start(self, stage: str, total: int | None = None) -> None:
        self._stop()
        self._stage, self._t0, self._c0 = stage, time.perf_counter(), time.process_time()
        self.inner.start(stage, total)

    def advance(self, stage: str, note: str = "") -> None:
        self.inner.advance(stage, note)

    def finish(self) -> None:
        self._stop()
        self.inner.finish()


@dataclass
class CompileResult:
    out: Path
    manifest: Manifest
    report: dict = field(default_factory=dict)
    cached: bool = False  # installed from the compile cache (lcc.compile_cache), not compiled


def _check_lowered(backend, out_dir, manifest, program, checked: Checked, floor: float | None = None) -> dict:
    """The lowered prefill (and prefill_logits) on the sample input, within the fp32 rule or, for a half-precision
    program, ``floor`` (its stages' limit against the fp32 oracle), against the last checked stage's logits
    (``checked``: the same passes, run by the check stage) or else the program it came from, run again here.

    The checked stage's logits are free; the program is run only when they do not match (a pass whose outputs
    depend on the cache's capacity, or a kv-cache dtype of its own), so the verdict is the one the program's
    own outputs give: the lowered artifact is always checked against what it was lowered from."""
    loaded = backend.load(out_dir, manifest)
    ids = checked.ids
    names = [n for n in ("prefill_logits", "prefill") if n in program.entries and n in loaded.entries]
    dev = device_of(loaded)  # a torch artifact for a cuda target loads onto the GPU; other backends move inputs
    if is_context_parallel(program.passes):  # it runs in its N ranks
        from lcc.distributed.launch import ranks_of, run_entry

        ranks = ranks_of(program.passes)
        got = {n: run_entry(loaded, n, ids, ranks=ranks, cache_layout=program.cache)[0].float() for n in names}
    else:
        with torch.inference_mode():  # prefill last: its logits give top-1
            got = {n: torch.as_tensor(loaded.entries[n](ids.to(dev), *program.cache.empty(dev))[0]).float().cpu()
                   for n in names}
    logits = checked.last.logits.unsqueeze(0)  # [1, S, V]: every position (prefill_logits), the last (prefill)
    want = {n: logits if n == "prefill_logits" else logits[:, -1:] for n in names}
    result = _lowered_verdict(backend, got, want, floor)
    if not result["ok"]:
        empty = program.cache.empty()  # shared by the program's runs: its exported graphs never write their inputs
        with torch.inference_mode():
            want = {n: program.entries[n](ids, *empty)[0].float() for n in names}
        result = _lowered_verdict(backend, got, want, floor)
    return result


def _lowered_verdict(backend, got: dict, want: dict, floor: float | None) -> dict:
    """The lowered check's record: the largest logit error over the entries, within the largest limit."""
    max_abs, limit = 0.0, 0.0
    for name in got:
        max_abs = max(max_abs, float((got[name] - want[name]).abs().max()))
        limit = max(limit, logit_limit(want[name]), floor or 0.0)
    last = list(got)[-1]
    return {"name": f"lowered:{backend.name}", "exact": True, "max_abs": max_abs, "limit": limit,
            "ok": max_abs <= limit, "top1": float((got[last].argmax(-1) == want[last].argmax(-1)).float().mean())}


def compile_model(loaded: LoadedModel, target_len: int, backend_name: str, passes: list[PassSpec] | None,
                  out: Path, force: bool = False, device: str = "cpu", plan_fn: Callable | None = None,
                  progress: Stages | None = None, dtype: str = "float32", kv_cache_dtype: str | None = None,
                  target: str | None = None, cache: bool = False, quality: str = "balanced") -> CompileResult:
    """Plan (unless ``passes`` are given) for ``device`` (a hardware profile), check, lower, write ``out``.

    ``plan_fn(program, target_len, device, quality) -> (plan dict, PassSpecs)``
    (:func:`lcc.cost.planner.plan_for_compile`) is given the canonical program of ``loaded`` (prefill and decode,
    captured small: the check stage shares it) and the quality level (``lcc.quality.rank``) to plan at.

    ``cache``: take the artifact from the compile cache when these inputs were compiled before, and keep
    the result there (:mod:`lcc.compile_cache`); ``dtype``, ``kv_cache_dtype`` and ``target`` are in its key."""
    from lcc.target import parse_target

    target = str(parse_target(target))  # None is cpu: one spelling in the cache key and lcc.json
    out = check_out(out, force)
    backend = get_backend(backend_name)
    check_dtype(backend, dtype)
    if loaded.spec.dtype != dtype:
        raise UsageError(f"--dtype {dtype}: the model was loaded in {loaded.spec.dtype}; load it in {dtype}")
    if passes is None and plan_fn is None:
        raise UsageError("no planner is available in this installation: give the passes with --pass")
    inputs = None
    if cache:
        from lcc.compile_cache import enabled

        # a malformed LCC_COMPILE_CACHE_MAX is a usage error now, not after the compile; weights never hashed
        # (a weights-free load) cannot be told apart, so they are never cached
        cache = enabled() and bool(loaded.weights_hash)
    if cache:
        inputs = cache_inputs(loaded.weights_hash, loaded.spec.model_id, target_len, backend.name, passes, device,
                              dtype, kv_cache_dtype, target, quality)
        hit = from_cache(inputs, out, force)
        if hit is not None:
            return hit
    result = _compile(loaded, target_len, backend, passes, out, force, device, plan_fn, progress, target,
                      kv_cache_dtype, quality)
    if inputs is not None:
        from lcc import compile_cache

        compile_cache.store(compile_cache.key_of(inputs), inputs, result.out)
    return result


def cache_inputs(weights_hash: str, model_id: str, target_len: int, backend_name: str,
                 passes: list[PassSpec] | None, device: str = "cpu", dtype: str = "float32",
                 kv_cache_dtype: str | None = None, target: str | None = None, quality: str = "balanced") -> dict:
    """The compile cache's key inputs of a compile (:func:`lcc.compile_cache.key_inputs`), computed from the
    weights hash alone: with ``passes`` None, the plan's inputs (its quality level) for the ``device`` profile."""
    from lcc import compile_cache

    return compile_cache.key_inputs(weights_hash, model_id, target_len, backend_name, passes,
                                    compile_cache.profile_inputs(device),
                                    compile_cache.plan_inputs(weights_hash, quality) if passes is None else None,
                                    target, dtype, kv_cache_dtype)


def from_cache(inputs: dict, out: Path, force: bool = False) -> CompileResult | None:
    """The artifact of ``inputs`` (:func:`cache_inputs`) installed at ``out`` from the compile cache, or
    ``None`` when it holds none (a damaged entry is deleted and is a miss)."""
    from lcc import compile_cache
    from lcc.integrity import record_built

    out = check_out(out, force)
    if not compile_cache.restore(compile_cache.key_of(inputs), out, force):
        return None
    manifest = artifact.load(out)
    native_files = getattr(get_backend(manifest.backend), "native_files", None)
    if native_files is not None:  # built here (the key holds the lcc and torch it was built with)
        record_built(out, native_files(out))
    report = json.loads((out / "report.json").read_text())
    return CompileResult(out, manifest, report, cached=True)


def default_out(model_id: str, target_len: int, backend_name: str) -> Path:
    """``--out``'s default: MODEL-LEN-BACKEND in the working directory."""
    from lcc.lengths import format_length

    return Path(f"{Path(model_id).name}-{format_length(target_len)}-{backend_name}")


def from_cache_by_name(model: str, target_len: int, backend_name: str, passes: list[PassSpec] | None,
                       out: Path | None, force: bool = False, device: str = "cpu", dtype: str = "float32",
                       kv_cache_dtype: str | None = None, target: str | None = None,
                       quality: str = "balanced") -> CompileResult | None:
    """:func:`from_cache` before the weights load: when the loader knows the weights hash of ``model`` (a preset,
    directory or file name) from its files alone; ``None`` otherwise (``compile_model`` looks again)."""
    from lcc.compile_cache import cached_weights_hash, enabled

    weights_hash = cached_weights_hash(model) if enabled() else None
    if weights_hash is None:
        return None
    model_id = str(Path(model))  # what the loader names a preset, a directory, a file or a hub id
    out = Path(out) if out is not None else default_out(model_id, target_len, backend_name)
    inputs = cache_inputs(weights_hash, model_id, target_len, backend_name, passes, device, dtype, kv_cache_dtype,
                          target, quality)
    return from_cache(inputs, out, force)


def _compile(loaded: LoadedModel, target_len: int, backend, passes: list[PassSpec] | None, out: Path,
             force: bool, device: str, plan_fn: Callable | None, progress: Stages | None,
             target: str | None, kv_cache_dtype: str | None = None, quality: str = "balanced") -> CompileResult:
    """The compile itself, each stage timed (``report["stage_seconds"]``; CPU time in ``"stage_cpu_seconds"``)."""
    from lcc.target import parse_target

    where = parse_target(target)
    dtype = loaded.spec.dtype
    stages = _Timed(progress or Stages())
    plan = {"source": "user", "passes": [str(p) for p in passes or []], "reason": "passes given on the command line",
            "device": device}
    check_len = min(CHECK_LEN, target_len)
    captured = canonical = planned = base = None
    if passes is None:
        # the planner prices the artifact's own capture (prefill, decode: the capacity is symbolic in their cost,
        # and its memoised costs then give the report's curves), which the capture stage then takes as it is; the
        # check stage gets prefill_full captured small (run at the target's capacity, each stage took seconds
        # more). A cache dtype of its own is planned on the small capture in the model's dtype, as before.
        from lcc.cost.planner import CAPTURE_CAPACITY

        shared = kv_cache_dtype in (None, dtype)
        stages.start("plan", 3)
        if shared:
            with graphs_not_run():  # copied by the passes or priced, never run before the export
                base = canonicalize(capture(loaded, capacity=target_len, entries=ENTRIES))
        captured = capture(loaded, capacity=max(check_len, CAPTURE_CAPACITY),
                           entries=("prefill_full",) if shared else ("prefill", "decode", "prefill_full"))
        stages.advance("plan", "capture")
        canonical = canonicalize(captured)
        stages.advance("plan", "canonical")
        planned = _only(base if shared else canonical, "prefill", "decode")
        plan, passes = plan_fn(planned, target_len, device, quality)
        stages.advance("plan")
        captured, canonical = _only(captured, "prefill_full"), _only(canonical, "prefill_full")
    stages.start("check", 3 + len(passes))
    with graphs_not_run():  # each stage's graphs get their code when run, not at every copy and pass
        checked = check_stages(loaded, passes, check_len, progress=lambda s: stages.advance("check", s),
                               captured=captured, canonical=canonical)
    reports = checked.reports
    failed = [f"{r.name} (max abs logit error {r.vs_prev_max_abs:.2e})" for r in reports if not r.ok]
    if failed:
        raise CheckFailed(f"exact stages out of tolerance on a {min(CHECK_LEN, target_len)}-token sample: "
                          f"{', '.join(failed)}; `lcc diff MODEL --pass ...` shows every stage")
    stages.start("capture", 2 + len(passes))
    with graphs_not_run():  # only the last stage is exported: its code is generated once, below
        if base is None:
            base = canonicalize(capture(loaded, capacity=target_len, entries=ENTRIES, cache_dtype=kv_cache_dtype))
        stages.advance("capture", "canonical")
        program = generate_code(apply_passes(base, passes, on_stage=lambda p: stages.advance("capture", p.stage)))
    stages.advance("capture", "cost")
    tmp = make_tmp(out)
    try:
        stages.start("lower", None)
        lowered = backend.lower(program, tmp, target=target, dtype=dtype, entries=ENTRIES,
                                progress=lambda s: stages.advance("lower", s))
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
            dtype=dtype,
            target=str(where),
        )
        manifest.write(tmp)
        stages.start("check lowered", 1)
        if where.is_cuda and not torch.cuda.is_available():
            lowered_check = {"name": f"lowered:{backend.name}", "exact": True, "unchecked": "no CUDA here",
                             "ok": True}
        else:
            # half precision: the lowered program may differ from the in-memory one by the dtype's own noise
            floor = max((r.limit for r in reports if r.exact and r.against == "fp32 oracle"), default=None)
            lowered_check = _check_lowered(backend, tmp, manifest, program, checked, floor)
        stages.advance("check lowered")
        stages.start("report", 2)
        report = {"stages": [r.to_dict() for r in reports], "lowered": lowered_check, "plan": plan,
                  "cost": cost_curves(base, program, passes, target_len, device, tmp / "cost.png", planned),
                  "timings": lowered.timings, "stage_seconds": stages.times, "stage_cpu_seconds": stages.cpu_times}
        stages.advance("report", "cost.png")
        from lcc.report import write_json, write_report

        write_report(tmp, manifest, report)
        stages.advance("report", "report.md")
        stages.finish()
        write_json(tmp, report)  # with the report stage's own time
        seal(backend, tmp)
        install(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CompileResult(out, manifest, report)


def _only(program, *entries: str):
    """``program`` with only ``entries``."""
    return program.with_entries({name: program.entries[name] for name in entries})


def curve_lengths(target_len: int, lowest: int = 1024) -> list[int]:
    """Powers of two from ``lowest`` up to the target (and the target itself)."""
    n, out = min(lowest, target_len), []
    while n < target_len:
        out.append(n)
        n *= 2
    return out + [target_len]


def cost_curves(base, program, passes, target_len: int, device: str, png: Path, planned=None) -> dict | None:
    """Predicted memory and prefill time against length for the plan and for no passes (lcc.cost); the PNG.

    ``planned``: the program the planner priced (the same model, captured small: the capacity is symbolic in
    the cost), whose costs with and without ``passes`` the planner has already walked; else ``program`` and
    ``base`` are walked.  ``None`` when the cost model is not installed or the device profile is unknown.
    """
    try:
        from lcc.cost import load_profile, plot_cost, program_cost
        from lcc.cost.planner import BUDGET_FRACTION, rewritten_cost
    except ImportError:
        return None
    profile = load_profile(device)
    lengths = curve_lengths(target_len)
    label = " + ".join(str(p) for p in passes) or "no passes"
    if planned is not None:
        priced, bare = (rewritten_cost(planned, p, profile.kind) for p in ([str(p) for p in passes], []))
    else:
        priced, bare = program_cost(_priced(program), profile.kind), None
    curves = {label: [priced.evaluate(n, profile) for n in lengths]}  # one walk prices every length
    if passes:
        bare = bare or program_cost(_priced(base), profile.kind)
        curves["no passes"] = [bare.evaluate(n, profile) for n in lengths]
    plot_cost(curves, str(png), f"{program.spec.model_id}: predicted cost on {profile.name}",
              BUDGET_FRACTION * profile.memory_bytes)
    return {"device": profile.name, "lengths": lengths,
            "curves": {k: [{"memory": e.memory, "prefill_time": e.prefill_time} for e in v]
                       for k, v in curves.items()}}


def _priced(program):
    """``program`` with only the entries an evaluation reads (``ProgramCost.prefill`` and ``.decode``): walking
    ``prefill_logits`` too took three quarters of the cost curves' time and changed no figure."""
    return program.with_entries({k: v for k, v in program.entries.items() if k in ("prefill", "decode")})


def seal(backend, out_dir: Path) -> None:
    """The last write of a compile: ``checksums.json`` over every file, and the native files recorded as built
    on this machine (``$LCC_CACHE/built.json``), so that ``load_artifact`` runs them without --trust-native."""
    from lcc.integrity import record_built, write_checksums

    write_checksums(out_dir)
    native_files = getattr(backend, "native_files", None)
    if native_files is not None:
        record_built(out_dir, native_files(out_dir))


def load_artifact(path: Path, trust_native: bool = False):
    """(manifest, runnable with .entries, tokenizer) of a compiled artifact directory: the checks of
    :func:`lcc.artifact.load_runnable` (format, version, checksums, native code), then transformers' tokenizer."""
    path = Path(path)
    manifest, runnable = artifact.load_runnable(path, trust_native)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return manifest, runnable, tokenizer
