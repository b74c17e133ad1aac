"""Benchmark lcc's Triton attention kernels against torch SDPA (flash, cuDNN) and FlexAttention.

Prefill: forward time and TFLOP/s, B=1, H=32, D=128, bf16, causal, L = 4k..128k; sliding
window 4096 at 128k; each block-sparse pattern at 64k against FlexAttention built from the
same predicate; all in the same run.  Decode: one query against a 32k and a 128k cache
(GQA 32/8), in GB/s of K/V read against the GPU's HBM bandwidth (datasheet, from
lcc's hardware profile) and the measured copy bandwidth; decode times are GPU time from a
CUDA graph (:func:`graph_ms`: one step's launches cost more host time than its GPU work),
with the eager per-call latency (``do_bench``) beside them.  FLOPs count 4*D per kept
(query, key) pair (``lcc.attention``'s cost model).  Prints a markdown table plus the
issue's targets as ratios (and writes both with ``--out``, a PNG beside it); exits 0 with
"skipped: no CUDA" where there is no GPU.  About 5 minutes on an H100.

    python bench/attention.py [--lengths 4k,16k] [--out bench.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile

import torch

B, H, HKV_DECODE, D = 1, 32, 8, 128
DTYPE = torch.bfloat16
# block-sparse patterns at --sparse-length: a few percent of the causal pairs each
PATTERNS = ("block-local:block=512,blocks=4", "strided:stride=16,block=128", "fixed:stride=16,c=2,block=128",
            "dilated:segment=4096,rate=1,levels=3,growth=4", "global-local:globals=128,window=4096,every=0")


def parse_length(text: str) -> int:
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def bench_ms(fn) -> float | None:
    """Median milliseconds of fn() (triton.testing.do_bench), None if the backend refuses the shape."""
    import triton

    try:
        fn()
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    except (RuntimeError, NotImplementedError, ValueError) as e:  # e.g. no cuDNN kernel for this shape
        print(f"  ({type(e).__name__}: {str(e).splitlines()[0][:100]})", file=sys.stderr)
        return None
    finally:
        torch.cuda.empty_cache()


def graph_ms(fn, reps: int = 20, trials: int = 10) -> float | None:
    """Median GPU milliseconds of one fn() with no host overhead: fn replayed from a CUDA graph, L2 flushed first.

    Two graphs of ``reps`` steps each, [flush L2, fn()] and [flush L2]; their replay-time difference / reps.
    For decode steps, where launching (Python, argument binding, two launches) takes longer than the GPU work,
    so that ``do_bench`` times the host; a real decode loop replays graphs too.  None if fn cannot be captured.
    """
    try:
        flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # larger than any L2
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (compiles) outside the capture, as torch.cuda.graph asks
            fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graphs = []
        for with_fn in (True, False):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(reps):
                    flush.zero_()
                    if with_fn:
                        fn()
            graphs.append(graph)
        medians = []
        for graph in graphs:
            times = []
            for _ in range(trials):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            medians.append(sorted(times)[trials // 2])
        return max(medians[0] - medians[1], 0.0) / reps
    except (RuntimeError, NotImplementedError, ValueError) as e:
        print(f"  (CUDA graph: {type(e).__name__}: {str(e).splitlines()[0][:100]})", file=sys.stderr)
        return None
    finally:
        torch.cuda.empty_cache()


def sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, **kw):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)

    return run


def flex(mask_mod, L, Lk=None):
    """FlexAttention (compiled) with a block mask built from the same kind of predicate."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(mask_mod, None, None, L, Lk or L, device="cuda", _compile=True)  # never L x L
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v, **kw: compiled(q, k, v, block_mask=block_mask, **kw)


def flex_mask_mod(mask: str):
    """FlexAttention's ``mask_mod(b, h, q_idx, kv_idx)`` for an lcc mask spec: the kind's portable predicate
    (operators only, so it traces), with queries and keys at the same absolute positions (Sq == Sk)."""
    from lcc.ops.masks import MaskSpec

    mod = MaskSpec.parse(mask).mask_mod()
    return lambda b, h, q_idx, kv_idx: mod(q_idx, kv_idx)


def sparse_rows(L):
    """Each block-sparse pattern: lcc's block-skipping kernel against FlexAttention on the same predicate."""
    from lcc.backends.triton.attention import flash_attention
    from lcc.ops.masks import mask_pairs

    rows = []
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=DTYPE) for _ in range(3))
    for mask in PATTERNS:
        flops = 4 * D * B * H * int(mask_pairs(mask, L, L))
        impls = {"lcc triton": lambda: flash_attention(q, k, v, None, D**-0.5, mask)}
        try:
            flex_fn = flex(flex_mask_mod(mask), L)
            impls["flex attention"] = lambda: flex_fn(q, k, v)
        except Exception as e:  # noqa: BLE001  (a baseline that cannot build its mask is reported as n/a)
            print(f"  flex {mask}: {type(e).__name__}: {str(e).splitlines()[0][:100]}", file=sys.stderr)
            rows.append((f"prefill {mask}", L, "flex attention", None, None, "TFLOP/s"))
        for impl, run in impls.items():
            ms = bench_ms(run)
            rows.append((f"prefill {mask}", L, impl, ms, None if ms is None else flops / ms / 1e9, "TFLOP/s"))
            print("  " + " | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    del q, k, v
    return rows


def prefill_rows(lengths, window):
    from torch.nn.attention import SDPBackend

    from lcc.backends.triton.attention import flash_attention
    from lcc.ops.masks import mask_pairs

    rows = []
    cases = [("causal", L, "causal") for L in lengths]
    sliding = f"sliding:window={window},sinks=0"
    cases.append((f"sliding w={window}", max(lengths), sliding))
    for name, L, mask in cases:
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=DTYPE) for _ in range(3))
        pairs = int(mask_pairs(mask, L, L)) if mask == "causal" else \
            int(torch.arange(1, L + 1).clamp(max=window).sum())  # exact; the op's sliding count is a bound
        flops = 4 * D * B * H * pairs
        impls = {"lcc triton": lambda: flash_attention(q, k, v, None, D**-0.5, mask)}
        if mask == "causal":
            impls["sdpa flash"] = lambda: sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v, is_causal=True)
            impls["sdpa cudnn"] = lambda: sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v, is_causal=True)
        flex_fn = flex(flex_mask_mod(mask), L)
        impls["flex attention"] = lambda: flex_fn(q, k, v)
        if L <= 16384:  # check the kernel where a dense reference fits
            ref = flex_fn(q, k, v)
            err = (flash_attention(q, k, v, None, D**-0.5, mask).float() - ref.float()).abs().max().item()
            print(f"  {name} L={L}: max |lcc - flex| = {err:.2e}", file=sys.stderr)
        for impl, fn in impls.items():
            ms = bench_ms(fn)
            rows.append((f"prefill {name}", L, impl, ms, None if ms is None else flops / ms / 1e9, "TFLOP/s"))
            print("  " + " | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
        del q, k, v
    return rows


def hbm_bandwidth_gbs() -> float | None:
    """The GPU's datasheet memory bandwidth from lcc's hardware profiles, when one matches its name."""
    name = torch.cuda.get_device_name().upper()
    key = next((p for s, p in (("H200", "h200"), ("H100", "h100"), ("A100", "a100-80gb"), ("L40S", "l40s"),
                               ("4090", "rtx4090")) if s in name), None)
    if key is None or (key == "h100" and "PCIE" in name):  # the profile is the SXM part
        return None
    try:
        from lcc.cost.hardware import load_profile

        return load_profile(key, calibrate_missing=False).bandwidth / 1e9
    except Exception as e:  # noqa: BLE001  (a bench still runs without the cost model)
        print(f"  (no hardware profile {key}: {e})", file=sys.stderr)
        return None


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    return 2 * x.numel() / ms / 1e6


def decode_rows(caches, window):
    from torch.nn.attention import SDPBackend

    from lcc.backends.triton.decode import flash_decode

    peak = copy_bandwidth_gbs()
    hbm = hbm_bandwidth_gbs()
    rows = [("copy bandwidth (reference)", 0, "torch copy_", None, peak, "GB/s")]
    if hbm:
        rows.append(("HBM bandwidth (datasheet)", 0, "-", None, hbm, "GB/s"))
    for L in caches:
        q = torch.randn(B, H, 1, D, device="cuda", dtype=DTYPE)
        k, v = (torch.randn(B, HKV_DECODE, L, D, device="cuda", dtype=DTYPE) for _ in range(2))
        moved = 2 * k.numel() * k.element_size()
        impls = {
            "lcc triton decode": lambda: flash_decode(q, k, v, None, D**-0.5, "causal"),
            "sdpa flash": lambda: sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v, enable_gqa=True),
            "sdpa efficient": lambda: sdpa(SDPBackend.EFFICIENT_ATTENTION)(q, k, v, enable_gqa=True),
        }
        for impl, fn in impls.items():
            ms, eager = graph_ms(fn), bench_ms(fn)
            gbs = None if not ms else moved / ms / 1e6
            share = "" if not gbs else f"{100 * gbs / peak:.0f}% of copy" + (f", {100 * gbs / hbm:.0f}% of HBM"
                                                                              if hbm else "")
            share += "" if eager is None else f"; eager call {eager:.3f} ms"
            rows.append(("decode causal", L, impl, ms, gbs, f"GB/s ({share.lstrip('; ')})" if share else "GB/s"))
        ms = graph_ms(lambda: flash_decode(q, k, v, None, D**-0.5, f"sliding:window={window},sinks=4"))
        moved_w = 2 * min(L, window + 4) * HKV_DECODE * D * k.element_size()
        rows.append((f"decode sliding w={window}", L, "lcc triton decode", ms, None if not ms else
                     moved_w / ms / 1e6, "GB/s"))
    return rows


def table(rows) -> str:
    lines = ["| case | L | implementation | ms | throughput | unit |", "|---|---:|---|---:|---:|---|"]
    for case, L, impl, ms, value, unit in rows:
        ms_s = "n/a" if ms is None else f"{ms:.3f}"
        val_s = "n/a" if value is None else f"{value:.1f}"
        lines.append(f"| {case} | {L // 1024 if L else ''}{'k' if L else ''} | {impl} | {ms_s} | {val_s} | {unit} |")
    return "\n".join(lines)


def targets(rows, lengths, window) -> list[tuple[str, float | None, float]]:
    """The issue's targets as (check, measured ratio, target): speed ratios are baseline ms / lcc ms."""
    ms = {(case, L, impl): t for case, L, impl, t, _, _ in rows}
    val = {(case, impl): v for case, _, impl, _, v, _ in rows}

    def ratio(a, b):
        return None if a is None or b is None else a / b

    out = []
    for L in lengths:
        best = [t for t in (ms.get(("prefill causal", L, "sdpa flash")), ms.get(("prefill causal", L, "sdpa cudnn")))
                if t is not None]
        lcc_ms = ms.get(("prefill causal", L, "lcc triton"))
        out.append((f"dense causal {L // 1024}k: fastest SDPA / lcc", ratio(min(best) if best else None, lcc_ms), 0.9))
    L = max(lengths)
    slide = ms.get((f"prefill sliding w={window}", L, "lcc triton"))
    out.append((f"sliding w={window} {L // 1024}k: flex / lcc",
                ratio(ms.get((f"prefill sliding w={window}", L, "flex attention")), slide), 1.0))
    out.append((f"sliding w={window} {L // 1024}k: lcc dense causal / lcc sliding",
                ratio(ms.get(("prefill causal", L, "lcc triton")), slide), 10.0))
    for case, L, impl, t, _, _ in rows:
        if case.startswith("prefill ") and case[8:] in PATTERNS and impl == "lcc triton":
            out.append((f"{case[8:]} {L // 1024}k: flex / lcc", ratio(ms.get((case, L, "flex attention")), t), 1.0))
    hbm = val.get(("HBM bandwidth (datasheet)", "-")) or val.get(("copy bandwidth (reference)", "torch copy_"))
    for case, L, impl, t, gbs, _ in rows:
        if case == "decode causal" and impl == "lcc triton decode":
            out.append((f"decode {L // 1024}k: lcc GB/s / HBM GB/s", ratio(gbs, hbm), 0.7))
    return out


def target_table(checks) -> str:
    lines = ["| target | measured | goal | met |", "|---|---:|---:|---|"]
    for name, got, goal in checks:
        lines.append(f"| {name} | {'n/a' if got is None else f'{got:.2f}x'} | >= {goal:g}x | "
                     f"{'n/a' if got is None else ('yes' if got >= goal else 'no')} |")
    return "\n".join(lines)


def plot(checks, path: str, device: str) -> None:
    """Each target's measured ratio against its goal (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(n, g, t) for n, g, t in checks if g is not None]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(shown) + 1.5))
    ys = range(len(shown))
    ax.barh(list(ys), [g for _, g, _ in shown], color=["tab:green" if g >= t else "tab:red" for _, g, t in shown])
    ax.scatter([t for _, _, t in shown], list(ys), marker="|", s=300, color="black", label="goal", zorder=3)
    ax.set_yticks(list(ys), [n for n, _, _ in shown], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ratio (higher is better)")
    ax.set_title(f"lcc attention kernels on {device}: ratio against the baseline")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_atomic(path: str, data: str | None = None, writer=None) -> None:
    """Write to a temp file beside ``path``, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        if writer is not None:
            writer(tmp)
        else:
            with open(tmp, "w") as f:
                f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4k,16k,64k,128k")
    ap.add_argument("--caches", default="32k,128k")
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--sparse-length", default="64k", help="length of the block-sparse pattern rows")
    ap.add_argument("--out", help="also write the markdown here (and a PNG of the targets beside it)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    import lcc.backends.triton  # noqa: F401  (registers the kernels)

    torch.manual_seed(0)
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    caches = [parse_length(x) for x in args.caches.split(",")]
    import triton

    rows = prefill_rows(lengths, args.window) + sparse_rows(parse_length(args.sparse_length))
    rows += decode_rows(caches, args.window)
    checks = targets(rows, lengths, args.window)
    text = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
            f"CUDA {torch.version.cuda}, {datetime.date.today().isoformat()}; B={B} H={H} D={D} bf16\n\n"
            f"{table(rows)}\n\nTargets (issue 3), as ratios measured in this run:\n\n{target_table(checks)}\n")
    print(text)
    if args.out:
        write_atomic(args.out, text)
        device = torch.cuda.get_device_name()
        write_atomic(os.path.splitext(args.out)[0] + ".png", writer=lambda tmp: plot(checks, tmp, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
