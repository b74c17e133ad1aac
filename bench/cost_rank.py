"""Does the cost model rank plans as the CPU does?  Predicted vs measured prefill time, Spearman's rho.

Each plan is a pass list; the program is SmolLM2-135M captured once.  At each length, every
plan's prefill is predicted (roofline on the ``cpu`` profile, calibrated at the start of the
run with the same thread count, so both sides see the same machine) and measured (best of
``--repeats`` calls after a warm-up, plans interleaved so a change in the machine's load hits
them all alike).  With one thread (the default) the measure is the process's CPU time, which
other processes on a shared machine barely move; with more, wall time.  rho is
computed per length, over the plans: the ranking the planner relies on.  Prints a table,
writes a PNG (predicted against measured) and, with ``--out``, a markdown section; exits 1 if
rho < 0.8 at any length.

    python bench/cost_rank.py [--lengths 2k] [--repeats 2] [--threads 1] [--out FILE.md] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PLANS = [
    [],
    ["flash"],
    ["attention-chunked:chunk=256"],
    ["attention-chunked:chunk=1024"],
    ["sliding-window:window=1024,sinks=4", "attention-chunked:chunk=256"],
    ["sliding-window:window=256,sinks=4", "attention-chunked:chunk=256"],
    ["kv-quant"],
]
MIN_RHO = 0.8


def ranks(xs: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: scipy.stats.spearmanr when scipy is installed, else Pearson's r of the ranks."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        ra, rb = ranks(a), ranks(b)
        n = len(a)
        ma, mb = sum(ra) / n, sum(rb) / n
        cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
        va = sum((x - ma) ** 2 for x in ra) ** 0.5
        vb = sum((y - mb) ** 2 for y in rb) ** 0.5
        return cov / (va * vb)
    return float(spearmanr(a, b).statistic)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for n in sorted({r["length"] for r in rows}):
        pts = [r for r in rows if r["length"] == n]
        ax.scatter([r["predicted"] for r in pts], [r["measured"] for r in pts], label=f"L = {n}")
        for r in pts:
            ax.annotate(r["plan"][:28], (r["predicted"], r["measured"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted prefill time (s, roofline on the calibrated cpu profile)")
    ax.set_ylabel("measured prefill time (s)")
    ax.set_title("cost model vs CPU: SmolLM2-135M prefill")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def markdown(rows: list[dict], rhos: dict, profile, args, threads: int) -> str:
    import platform

    import torch

    import lcc

    lines = [f"Device: {profile.description} (calibrated: matmul {profile.matmul['float32'] / 1e9:.0f} GFLOP/s, "
             f"vector {profile.vector['float32'] / 1e9:.2f} GFLOP/s, copy {profile.bandwidth / 1e9:.1f} GB/s). "
             f"Python {platform.python_version()}, torch {torch.__version__}, "
             f"lcc {lcc.__version__}, {time.strftime('%Y-%m-%d')}. Model {args.model}; best of {args.repeats} "
             f"prefill calls per plan, {'process CPU time' if threads == 1 else 'wall time'}.", "",
             "| length | plan | predicted (s) | measured (s) | measured / predicted |", "|---|---|---|---|---|"]
    lines += [f"| {r['length']} | {r['plan']} | {r['predicted']:.2f} | {r['measured']:.2f} | "
              f"{r['measured'] / r['predicted']:.2f} |" for r in rows]
    lines += ["", "Spearman's rho of predicted against measured, over the plans at each length: "
              + ", ".join(f"{n}: **{rho:.3f}** ({sum(r['length'] == n for r in rows)} plans)"
                          for n, rho in rhos.items()) + f" (the bar: >= {MIN_RHO})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch
    from rich.progress import Progress

    from lcc.capture import capture
    from lcc.cost.calibrate import calibrate
    from lcc.cost.model import program_cost
    from lcc.lengths import parse_lengths
    from lcc.models import load_model
    from lcc.passes import apply_passes, canonicalize

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="2k")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: measure CPU time; 0: torch's default, "
                    "wall time)")
    ap.add_argument("--out", default=None, help="write the markdown section here")
    ap.add_argument("--plot", default="cost_rank.png", help="predicted against measured, PNG")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # one thread: the process's CPU time is the work itself, whatever else the machine runs
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    lengths = parse_lengths(args.lengths)
    profile = calibrate(save=False)[0]
    print(f"cpu profile: matmul {profile.matmul['float32'] / 1e9:.1f} GFLOP/s, vector "
          f"{profile.vector['float32'] / 1e9:.2f} GFLOP/s, copy {profile.bandwidth / 1e9:.1f} GB/s, "
          f"{torch.get_num_threads()} threads", flush=True)
    loaded = load_model(args.model)
    base = canonicalize(capture(loaded, max(lengths), entries=("prefill",)))
    programs = [(" + ".join(p) or "(none)", apply_passes(base, p)) for p in PLANS]
    costs = [program_cost(prog, "cpu") for _, prog in programs]
    rows = []
    with torch.inference_mode(), Progress() as bar:
        job = bar.add_task("prefill", total=len(lengths) * len(PLANS) * args.repeats)
        for _, prog in programs:  # warm-up: kernels' one-time set-up out of the timings
            prog.entries["prefill"](torch.randint(0, 1000, (1, 64)), *prog.cache.empty())
        for n in lengths:
            ids = torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(n))
            best = [float("inf")] * len(programs)
            for _ in range(args.repeats):
                for i, (_, prog) in enumerate(programs):
                    cache = prog.cache.empty()
                    t = clock()
                    prog.entries["prefill"](ids, *cache)
                    best[i] = min(best[i], clock() - t)
                    bar.advance(job)
            for (name, _), pc, m in zip(programs, costs, best):
                rows.append({"plan": name, "length": n, "predicted": pc.evaluate(n, profile).prefill_time,
                             "measured": m})
                bar.console.print(f"{name:<60} {n:>6} predicted {rows[-1]['predicted']:8.2f} s  measured {m:8.2f} s")
    rhos = {n: spearman([r["predicted"] for r in rows if r["length"] == n],
                        [r["measured"] for r in rows if r["length"] == n]) for n in lengths}
    text = markdown(rows, rhos, profile, args, torch.get_num_threads())
    print(text)
    if args.plot:
        plot(rows, args.plot)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(args.out + ".tmp", args.out)
    return 0 if min(rhos.values()) >= MIN_RHO else 1


if __name__ == "__main__":
    sys.exit(main())
