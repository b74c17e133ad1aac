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
    program = canonicalize(capture(loaded, args["capacity"], entries=("prefill",)))
    program = apply_passes(program, args["passes"])
    gm = program.entries["prefill"]

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

    cache = program.cache.empty()
    with torch.inference_mode():
        gm(torch.randint(0, 1000, (1, 64)), *cache)
        for n in args["lengths"]:
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
            print(json.dumps({"length": n, "peak_delta": peak - base, "seconds": seconds, "baseline": base}),
                  flush=True)
''')


def measure_prefill(model: str, lengths: list[int], passes: list[str] = (), capacity: int | None = None,
                    threads: int | None = None, timeout: float | None = None) -> list[dict]:
    """[{length, peak_delta (bytes), seconds, baseline}] of CPU prefill at each length, in a subprocess."""
    args = {"model": model, "lengths": list(lengths), "passes": list(passes),
            "capacity": capacity or max(lengths), "threads": threads}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
