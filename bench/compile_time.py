"""Time ``lcc compile``: a cold compile stage by stage, then the same compile from the compile cache.

The cold compile runs with ``--no-cache`` in a fresh process (the model already cached, the CPU
profile already calibrated: first-use calibration is not counted); its stage times come from the
artifact's ``report.json`` (``stage_seconds``, wall, and ``stage_cpu_seconds``, the process's CPU
time). Its artifact is then stored in the compile cache under the key an identical compile
computes (what a compile without ``--no-cache`` would have stored), and the identical command
runs again in a fresh process: a hit, timed end to end, with its parts (key, checksum
verification, link and install) timed in process. Prints a markdown table and writes it to
``docs/compile-time.md`` with the device, versions, date and load average (the time of a
compile on a shared machine depends on it), keeping the notes below its ``NOTES`` line. CI does
not run this.

    python bench/compile_time.py [--model smollm2-135m] [--target-len 32k] [--out docs/compile-time.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES = "<!-- notes below: kept when bench/compile_time.py rewrites the figures above -->"


def lcc_compile(model: str, length: str, out: Path, *extra: str) -> tuple[float, str]:
    """(wall seconds, stdout) of ``python -m lcc compile`` in a fresh process (its output shown on failure)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lcc", "compile", model, "--target-len", length, "--out", str(out),
                        "--force", *extra], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"lcc compile failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    print(r.stdout.strip())
    return wall, r.stdout


def cache_parts(out: Path, cached_out: Path, target_len: int) -> tuple[dict, dict]:
    """(the cache key inputs of the artifact at ``out``, seconds of a hit's parts in process)."""
    from lcc import artifact, compile_cache
    from lcc.compile import cache_inputs, from_cache
    from lcc.integrity import verify

    m = artifact.load(out)
    planned = m.plan["source"] == "planner"
    from lcc.passes import parse_pass

    passes = None if planned else [parse_pass(p) for p in m.plan["passes"]]
    t0 = time.perf_counter()
    # the inputs `lcc compile` itself keys by (no --kv-cache-dtype given: None; the manifest's dtype and target)
    inputs = cache_inputs(m.weights_hash, m.model_id, target_len, m.backend, passes, m.plan["device"], m.dtype,
                          None, m.target)
    parts = {"key": time.perf_counter() - t0}
    compile_cache.store(compile_cache.key_of(inputs), inputs, out)
    entry = compile_cache.root() / compile_cache.key_of(inputs)
    t0 = time.perf_counter()
    verify(entry / compile_cache.ARTIFACT)
    parts["verify checksums"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if from_cache(inputs, cached_out, force=True) is None:
        sys.exit("the stored artifact was not found again")
    parts["verify + link + install"] = time.perf_counter() - t0
    return inputs, parts


def device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--target-len", default="32k")
    ap.add_argument("--out", default=str(ROOT / "docs" / "compile-time.md"))
    args = ap.parse_args()
    import torch
    import transformers

    import lcc
    from lcc.compile import STAGES
    from lcc.lengths import parse_length

    n = parse_length(args.target_len)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lcc-compile-time-") as work:
        cold_out, hit_out = Path(work) / "cold", Path(work) / "hit"
        cold, _ = lcc_compile(args.model, args.target_len, cold_out, "--no-cache")
        report = json.loads((cold_out / "report.json").read_text())
        seconds, cpu = report.get("stage_seconds", {}), report.get("stage_cpu_seconds", {})
        stages = {k: seconds[k] for k in STAGES if k in seconds}
        _, parts = cache_parts(cold_out, Path(work) / "parts", n)
        hit, said = lcc_compile(args.model, args.target_len, hit_out)
        if "(from the compile cache)" not in said:
            sys.exit("the second compile missed the cache (lcc's source changed in between?): run it again")
        hit_files = [p for p in hit_out.rglob("*") if p.is_file()]
        same = all((cold_out / p.relative_to(hit_out)).read_bytes() == p.read_bytes() for p in hit_files)
        linked = all(os.path.samefile(cold_out / p.relative_to(hit_out), p) for p in hit_files)
    end_load = os.getloadavg()
    rows = [("cold compile (--no-cache), whole process", cold, None)]
    rows += [(f"  {k}", v, cpu.get(k)) for k, v in stages.items()]
    rows += [("  (process start, load, writes outside the stages)", cold - sum(stages.values()), None)]
    rows += [("identical compile from the cache, whole process", hit, None)]
    rows += [(f"  {k} (in process)", v, None) for k, v in parts.items()]
    table = ["| step | wall seconds | CPU seconds |", "|---|---|---|"]
    table += [f"| {k} | {v:.1f} | {'' if c is None else f'{c:.1f}'} |" for k, v, c in rows]
    head = [f"# `lcc compile {args.model} --target-len {args.target_len}`: compile time", "",
            f"Measured by `python bench/compile_time.py` on {datetime.date.today().isoformat()}: {device()}; "
            f"load average {load[0]:.1f} at the start and {end_load[0]:.1f} at the end (the machine is shared: other "
            "work slows every stage); "
            f"lcc {lcc.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}. The model was already cached and the CPU profile already "
            "calibrated. CPU seconds: the compiling process's CPU time in each stage, all its threads "
            "(`time.process_time`), the figure other work on the machine disturbs less. "
            "The cached compile's files are "
            f"{'byte-identical to' if same else 'NOT identical to'} the cold compile's"
            f"{' (hard links to the same files: the cache and --out are on one file system)' if linked else ''}.",
            ""]
    text = "\n".join(head + table) + "\n"
    print(text)
    out = Path(args.out)
    if out.is_file() and NOTES in out.read_text():  # the hand-written analysis below the figures is kept
        text += "\n" + NOTES + out.read_text().split(NOTES, 1)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)


if __name__ == "__main__":
    main()
