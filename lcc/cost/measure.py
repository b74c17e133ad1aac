"""Measure what the cost model predicts: peak memory and time of CPU prefill, each run in a fresh process.

Peak memory is the growth of the process's resident set during one prefill call: the
kernel's high-water mark (``VmHWM``) is reset just before the call (``/proc/self/clear_refs``
with ``5``) and read after it, against ``VmRSS`` at the reset.  Before that, a short warm-up
prefill loads the kernels' one-time buffers (oneDNN, OpenMP threads) and ``malloc_trim``
hands freed heap back, so the baseline is weights + cache + interpreter and the growth is
the activations the liveness walk predicts.  This counts what the allocator really holds
(not what tensors claim), and needs no torch CPU allocator statistics, which torch does not
keep.  Linux only (``clear_refs`` since 4.0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent('''
    import ctypes, gc, json, sys, time, torch
    from lcc.capture import capture
    from lcc.models import load_model
    from lcc.passes import apply_passes, canonicalize

    args = json.loads(sys.argv[1])
    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    loaded = load_model(args["model"])
    captured = canonicalize(capture(loaded, args["capacity"], entries=("prefill",)))

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def trim():
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass

    def measure(program, lengths, predict):
        gm = program.entries["prefill"]
        with torch.inference_mode():
            gm(torch.randint(0, 1000, (1, 64)), *program.cache.empty())
            for n in lengths:
                ids = torch.randint(0, 1000, (1, n))
                cache = program.cache.empty()
                trim()
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                base = status("VmRSS:")
                t = time.perf_counter()
                out = gm(ids, *cache)
                seconds = time.perf_counter() - t
                peak = status("VmHWM:")
                del out
                row = {"passes": list(program.passes), "length": n,
                       "peak_delta": peak - base, "seconds": seconds, "baseline": base}
                if predict is not None:
                    row["predicted"] = predict(n)
                print(json.dumps(row), flush=True)

    for passes, lengths in args["runs"]:
        program = apply_passes(captured, passes)
        predict = None
        if args["predict"]:
            from lcc.cost.model import program_cost

            cost = program_cost(program, "cpu").prefill
            predict = lambda n, cost=cost, cap=program.cache.capacity: cost.peak(n, n, cap)[0]
        measure(program, lengths, predict)
''')


MMAP_THRESHOLD = 128 * 1024  # glibc's default static threshold, pinned (see measure_prefill)


def measure_prefill(model: str, lengths: list[int], passes: list[str] = (), capacity: int | None = None,
                    threads: int | None = None, timeout: float | None = None,
                    mmap_threshold: int | None = MMAP_THRESHOLD, predict: bool = False,
                    runs: list[tuple[list[str], list[int]]] | None = None) -> list[dict]:
    """[{passes, length, peak_delta (bytes), seconds, baseline}] of CPU prefill at each length, in a subprocess.

    ``runs`` ([(passes, lengths), ...]) measures several plans from one load and capture
    (instead of ``passes`` at ``lengths``); the capacity defaults to the longest length.

    With ``predict``, each row also has ``predicted``: the liveness walk's peak activations of
    the very program measured (``lcc.cost``), priced at that length and the cache's capacity.

    ``mmap_threshold`` pins glibc's ``M_MMAP_THRESHOLD`` (``MALLOC_MMAP_THRESHOLD_``): by default
    glibc raises it to the size of each large block freed (up to 32 MiB), after which the
    layer-sized tensors come from the heap, whose holes stay resident; the resident set then
    depends on the allocation history (measured: +20-30% over the live tensors for SmolLM2).
    Pinned, every tensor-sized block is its own mapping, returned when freed, and the resident
    set follows the live tensors.  ``None`` measures with glibc's defaults.
    """
    runs = [(list(p), list(ns)) for p, ns in (runs or [(passes, lengths)])]
    args = {"model": model, "runs": runs, "capacity": capacity or max(n for _, ns in runs for n in ns),
            "threads": threads, "predict": predict}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
