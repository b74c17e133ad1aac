"""CPU cost per token of ``lcc.rerope_attention`` (every mapping kind) against plain flash attention.

One layer's attention at smollm2-135m's shapes (B=1, 9 query heads on 3 KV heads, head dim 64,
fp32, causal prefill of L tokens), each kind with the parameters its pass picks for an 8k model
at length L (ReRoPE and Leaky ReRoPE: window T / 4, factor 16; Self-Extend: W = T / 4 and the
smallest power-of-two G whose reach covers L; DCA: ChunkLlama's chunk 3 T / 4, local T / 16).
"flash" is ``lcc.attention``'s CPU flash path (PyTorch's fused SDPA) after the two RoPE
rotations (what the ``flash`` pass gives a plain program), timed again just before each kind
(the machine may be shared: the ratio to that flash time is the comparable number).  Each
figure is one call, or the best of ``--repeat``, in microseconds per token; ``--before`` also times the
pair-by-pair path (every score chunk materialised and selected pair by pair: what ran every
causal call before the flash-run path, and still runs non-causal masks), reached here through a
sliding mask as wide as L, which admits exactly the causal pairs.

    python bench/remap_cpu.py [--lengths 4k,16k] [--threads 1] [--repeat 2] [--before] [--out remap_cpu.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

B, HQ, HKV, D, THETA, TRAINED = 1, 9, 3, 64, 100000.0, 8192


def parse_length(text: str) -> int:
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def kinds(length: int) -> dict[str, dict]:
    """Each kind's op arguments as its pass sets them for an 8k model run at ``length``."""
    from lcc.passes.rerope import dca_defaults, self_extend_defaults

    group, window = self_extend_defaults(TRAINED, length)
    chunk, local = dca_defaults(TRAINED)
    return {"rerope": dict(window=TRAINED // 4), "leaky-rerope": dict(window=TRAINED // 4, leaky_factor=1 / 16),
            f"self-extend (G={group}, W={window})": dict(kind="self-extend", window=window, group=group),
            f"dca (chunk={chunk}, local={local})": dict(kind="dca", window=local, chunk_size=chunk)}


def seconds(fn, repeat: int = 1) -> float:
    """The best of ``repeat`` calls (the least disturbed by the machine's other work)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(length: int, before: bool, repeat: int) -> list[tuple[str, float, float, float | None]]:
    """(name, seconds, seconds of flash timed just before it, seconds of the pair-by-pair path or None) for each
    kind at ``length``, after a first row for flash itself (its best time)."""
    from lcc.ops.attention import attention_flash_cpu
    from lcc.ops.rerope import rerope_chunked
    from lcc.ops.rope import rope_reference

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, length, D, generator=g) for h in (HQ, HKV, HKV))
    inv_freq = 1.0 / (THETA ** (torch.arange(0, D, 2).float() / D))
    pos = torch.arange(length)[None]

    def flash():
        rotated = rope_reference(q, pos, inv_freq), rope_reference(k, pos, inv_freq)
        return attention_flash_cpu(*rotated, v, None, D**-0.5, "causal")

    rows = []
    for name, args in kinds(length).items():
        base = seconds(flash, repeat)  # next to each kind, so a change in the machine's load hits both alike
        now = seconds(lambda: rerope_chunked(q, k, v, None, inv_freq, 1.0, None, D**-0.5, **args), repeat)
        old = seconds(lambda: rerope_chunked(q, k, v, None, inv_freq, 1.0, None, D**-0.5,
                                             mask=f"sliding:window={length}", **args)) if before else None
        rows.append((name, now, base, old))
        print(f"{length}: flash {base:.2f} s, {name} {now:.2f} s" + (f" (pair-by-pair {old:.2f} s)" if before else ""),
              file=sys.stderr, flush=True)
    best = min(base for _, _, base, _ in rows)
    return [("flash (RoPE + fused SDPA)", best, best, None)] + rows


def table(results: dict[int, list], threads: int, repeat: int) -> str:
    before = any(old is not None for rows in results.values() for *_, old in rows)
    head = "| L | attention | us / token | x flash |" + (" pair-by-pair us / token | x flash |" if before else "")
    calls = "one call each" if repeat == 1 else f"best of {repeat} calls (pair-by-pair: one)"
    lines = [f"One layer's attention, smollm2-135m shapes, fp32, {threads} thread(s), {calls}; "
             "x flash: against flash timed just before the row.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for length, rows in results.items():
        for name, now, base, old in rows:
            cells = [f"{length // 1024}k", name, f"{1e6 * now / length:.1f}", f"{now / base:.2f}"]
            if before:
                cells += ["", ""] if old is None else [f"{1e6 * old / length:.1f}", f"{old / base:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4k,16k", help="comma-separated sequence lengths (4k = 4096)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--before", action="store_true", help="also time the pair-by-pair path (slow at 16k)")
    ap.add_argument("--repeat", type=int, default=1, help="time each call this many times, keep the best")
    ap.add_argument("--out", help="write the markdown table here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = map(parse_length, args.lengths.split(","))
    results = {length: measure(length, args.before, max(1, args.repeat)) for length in lengths}
    text = table(results, args.threads, max(1, args.repeat))
    print(text)
    if args.out:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
