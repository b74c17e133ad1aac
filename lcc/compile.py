"""``lcc compile``: plan -> apply -> check every stage -> lower -> an artifact directory.

The artifact holds ``lcc.json`` (version, model id and weights hash, target length,
plan, backend, cache layout, entry-point signatures), the lowered files, the
tokenizer, and a report (plan table, pass-by-pass diff, plots).  It is written to
a temporary directory next to the target and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import lcc
from lcc.backends import get_backend
from lcc.capture import capture
from lcc.diff import diff as run_diff
from lcc.errors import UsageError
from lcc.models.loader import LoadedModel
from lcc.passes import PassSpec, apply_passes, canonicalize

CHECK_LEN = 256  # tokens of sample input for the stage checks


@dataclass
class CompileResult:
    out: Path
    manifest: dict
    report: dict = field(default_factory=dict)


def entry_signatures(program) -> dict:
    cache = [{"name": f"{kv}_{i}", "shape": list(program.cache.shapes()[0]), "dtype": program.cache.dtype}
             for i in range(program.cache.layers) for kv in ("k", "v")]
    b, v = program.cache.batch, program.spec.vocab
    return {
        "prefill": {"inputs": [{"name": "input_ids", "shape": [b, "S"], "dtype": "int64"}, *cache],
                    "outputs": [{"name": "logits", "shape": [b, 1, v], "dtype": "float32"}, *cache]},
        "decode": {"inputs": [{"name": "input_ids", "shape": [b, 1], "dtype": "int64"},
                              {"name": "position", "shape": [], "dtype": "int64"}, *cache],
                   "outputs": [{"name": "logits", "shape": [b, 1, v], "dtype": "float32"}, *cache]},
    }


def _check_lowered(backend, out_dir, manifest, program, ids) -> dict:
    """The lowered prefill against the program it came from, on the sample input."""
    loaded = backend.load(out_dir, manifest)
    with torch.inference_mode():
        want = program.entries["prefill"](ids, *program.cache.empty())[0]
        got = loaded.entries["prefill"](ids, *program.cache.empty())[0]
    got = torch.as_tensor(got)
    return {"name": f"lowered:{backend.name}", "exact": True, "max_abs": float((got - want).abs().max()),
            "top1": float((got.argmax(-1) == want.argmax(-1)).float().mean())}


def compile_model(loaded: LoadedModel, target_len: int, backend_name: str, passes: list[PassSpec] | None,
                  out: Path, force: bool = False, device: str = "cpu", plan_fn: Callable | None = None,
                  progress: Callable[[str], None] | None = None) -> CompileResult:
    step = progress or (lambda _: None)
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"{out} exists: pass --force to replace it, or choose another --out")
    backend = get_backend(backend_name)
    plan = {"source": "user", "passes": [str(p) for p in passes or []], "reason": "passes given on the command line"}
    if passes is None:
        if plan_fn is None:
            raise UsageError("no planner is available in this installation: give the passes with --pass")
        step("plan")
        plan, passes = plan_fn(loaded, target_len, device)
    step("check")
    reports = run_diff(loaded, passes, min(CHECK_LEN, target_len), progress=lambda s: step(f"check {s}"))
    failed = [r.name for r in reports if not r.ok]
    if failed:
        raise RuntimeError(f"exact stages out of tolerance: {', '.join(failed)}; see `lcc diff`")
    step("capture")
    program = apply_passes(canonicalize(capture(loaded, capacity=target_len)), passes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        step(f"lower {backend.name}")
        lowered = backend.lower(program, tmp, progress=lambda s: step(f"lower {s}"))
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        manifest = {
            "lcc_version": lcc.__version__,
            "model": {"id": loaded.spec.model_id, "weights_hash": loaded.weights_hash, "spec": loaded.spec.to_dict()},
            "target_len": target_len,
            "backend": backend.name,
            "plan": plan,
            "cache": program.cache.__dict__,
            "entries": entry_signatures(program),
            "files": sorted(lowered.files),
            "lowering": {"native": lowered.native, "fallbacks": sorted(lowered.fallbacks), "notes": lowered.notes},
            "checks": [{"stage": r.name, "exact": r.exact, "ok": r.ok} for r in reports],
        }
        (tmp / "lcc.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        step("check lowered")
        from lcc.data import sample_ids

        ids = torch.tensor([sample_ids(loaded.tokenizer, min(CHECK_LEN, target_len), loaded.spec.vocab)])
        lowered_check = _check_lowered(backend, tmp, manifest, program, ids)
        report = {"stages": [r.to_dict() for r in reports], "lowered": lowered_check, "plan": plan}
        from lcc.report import write_report

        write_report(tmp, manifest, report)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CompileResult(out, manifest, report)


def load_artifact(path: Path):
    """(manifest, runnable with .entries, tokenizer) of a compiled artifact directory."""
    path = Path(path)
    manifest_file = path / "lcc.json"
    if not manifest_file.is_file():
        raise UsageError(f"{path} is not an lcc artifact (no lcc.json): run `lcc compile ... --out {path}` first")
    manifest = json.loads(manifest_file.read_text())
    backend = get_backend(manifest["backend"])
    runnable = backend.load(path, manifest)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return manifest, runnable, tokenizer
