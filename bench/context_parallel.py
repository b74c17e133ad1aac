"""Context-parallel prefill on this CPU (gloo, one thread per rank) against lcc.cost.comm's prediction.

Measures, for each length: per-rank memory (the cache each rank holds, by layout and as resident
pages: VmRSS growth over the prefill; and peak RSS) for 1, 2 and 4 ranks, and prefill time for 1
and 2 ranks; the gloo loopback all-gather bandwidth, which becomes the ``cpu`` profile's link for
the prediction made in the same run.  Then prints the predicted 8 x H100 prefill of a 1M-token
prompt for a Llama-3-8B-shaped model (bf16) with the communication share.

    python bench/context_parallel.py                       # smollm2-135m at 8k and 16k (slow on 2 cores)
    python bench/context_parallel.py --model tiny-llama --lengths 1k,2k   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import time

import torch

from lcc.capture.export import capture
from lcc.cost import comm
from lcc.cost.hardware import load_profile
from lcc.distributed.launch import launch
from lcc.lengths import parse_length
from lcc.models import load_model
from lcc.models.spec import ModelSpec, RotarySpec
from lcc.passes import apply_passes, canonicalize
from lcc.runtime import empty_cache

LLAMA3_8B = ModelSpec(model_id="llama-3-8b-shape", family="llama", layers=32, heads=32, kv_heads=8, head_dim=128,
                      hidden=4096, vocab=128256, attention=("full",) * 32, rotary=RotarySpec(500000.0, 128),
                      trained_len=8192, dtype="bfloat16", params=8_030_261_248)


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def rank_prefill(program, ids) -> dict:
    """One rank: prefill ``ids`` once; seconds, cache bytes by layout, RSS growth and peak RSS."""
    torch.set_num_threads(1)
    cache = empty_cache(program.cache, "cpu")
    before = _status("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        out = program.entries["prefill"](ids, *cache)
    seconds = time.perf_counter() - start
    del out
    return {"s": seconds, "cache": program.cache.bytes(), "rss_growth": _status("VmRSS") - before,
            "peak_rss": _status("VmHWM")}


def single(program, ids) -> dict:
    """:func:`rank_prefill` in a fresh forked process, as each rank is (the program is shared, not pickled)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    child = ctx.Process(target=lambda: queue.put(rank_prefill(program, ids)))
    child.start()
    row = queue.get()
    child.join()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="8k,16k")
    ap.add_argument("--memory-ranks", default="1,2,4")
    args = ap.parse_args()
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    loaded = load_model(args.model)
    spec = loaded.spec
    bandwidth, latency = launch(2, comm.measure_loopback)
    cpu = load_profile("cpu")
    threads = torch.get_num_threads()
    one_thread = dataclasses.replace(cpu, matmul={k: v / threads for k, v in cpu.matmul.items()},
                                     link="gloo loopback (measured)", link_bandwidth=bandwidth, link_latency=latency)
    print(f"{args.model}: gloo loopback all-gather {bandwidth / 1e9:.2f} GB/s into a rank, {latency * 1e6:.0f} us per "
          f"message; cpu profile's matmul "
          f"peak / {threads} threads = {one_thread.peak_flops('matmul', 'float32') / 1e9:.1f} GFLOP/s per rank")
    print("length ranks  prefill_s  predicted_s  comm_s(pred)  cache/rank_MB  rss_growth_MB  peak_rss_MB")
    for length in lengths:
        # the single-device program a user runs (flash attention), and the same with the sequence split over N
        # ranks: comparing against the canonical program (reference attention, scores materialised) overstated
        # the speed-up several times
        program = apply_passes(canonicalize(capture(loaded, length, entries=("prefill",))), ["flash"])
        ids = torch.randint(0, spec.vocab, (1, length), generator=torch.Generator().manual_seed(0))
        for n in [int(r) for r in args.memory_ranks.split(",")]:
            if n == 1:
                row = single(program, ids)
            else:
                row = launch(n, rank_prefill, apply_passes(program, [f"context-parallel:ranks={n}"]), ids)
            pred = comm.predict_prefill(spec, length, n, one_thread, "float32")
            print(f"{length:6d} {n:5d} {row['s']:10.2f} {pred['time_s']:12.2f} {pred['comm_s']:13.3f} "
                  f"{row['cache'] / 2**20:14.1f} {row['rss_growth'] / 2**20:14.1f} {row['peak_rss'] / 2**20:12.1f}")
    h100 = load_profile("h100")
    for n in (1, 8):
        p = comm.predict_prefill(LLAMA3_8B, 1 << 20, n, h100, "bfloat16")
        print(f"predicted {n}x H100, Llama-3-8B shape, 1M-token prefill (bf16): {p['time_s']:.1f} s per rank "
              f"(compute {p['compute_s']:.1f} s, communication {p['comm_s']:.2f} s = {100 * p['comm_share']:.1f}% "
              f"over {p['link']}); {p['bytes_in'] / 2**30:.1f} GiB received; memory per rank "
              f"{p['memory']['total'] / 2**30:.1f} GiB (cache {p['memory']['cache'] / 2**30:.1f} GiB)")


if __name__ == "__main__":
    main()
