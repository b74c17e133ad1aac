"""Benchmark decode over a quantized KV cache (lcc's Triton ``kvq_decode``) against the bf16 cache.

One query token (B=1, 32 query heads sharing 8 kv heads, head dim 128, bf16 queries) attends
over a 32k and a 128k cache held as bf16 (the baseline: lcc's Triton split-K ``flash_decode``),
KIVI int8 / int4 (keys per channel, values per token, group 32, 128 recent tokens in fp16) and
fp8 e4m3.  Every row is timed by the same harness: GPU time of one step replayed from a CUDA
graph with L2 flushed before it (``attention.graph_ms``), since a step's launches take longer
on the host than a 32k step takes on the GPU; the eager per-call latency (``do_bench``, host
overhead included) is printed beside it.  Also bytes of cache read per step and GB/s.  The
quantized parts are filled with random codes and scales: the kernel's work does not depend
on the values.  The target (the GPU issue): int8 / fp8 decode >= 1.8x lower latency than
bf16 at the same length, printed as ratios of the graph times measured in this run, each format's output
first checked against ``attention_kvq_reference`` on the same parts (a wrong kernel's time is not reported
as a ratio: the compiled path, fp16 tiles and inline PTX, runs only here).  Exits 0
with "skipped: no CUDA" where there is no GPU.  About a minute on an H100.

    python bench/kv_decode.py [--caches 32k,128k] [--out docs/kv-decode.md]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import bench_ms, graph_ms, parse_length, write_atomic  # noqa: E402  (a sibling bench script)

B, H, HKV, D = 1, 32, 8, 128
FORMATS = ("int8:group=32,keys=channel,residual=128", "int4:group=32,keys=channel,residual=128",
           "fp8:group=32,keys=token,residual=128")
TARGET = 1.8  # int8 / fp8 latency at least this many times lower than bf16
TOL = 1e-2  # max error against the reference relative to its largest output; bf16 rounding alone is 2^-8 = 4e-3


def random_parts(fmt, which: str, length: int, device="cuda") -> list[torch.Tensor]:
    """One layer's K or V parts in ``fmt`` at capacity ``length``, random but finite."""
    parts = []
    for name, shape, dtype in fmt.part_specs(which, B, HKV, length, D):
        if name == "codes":
            codes = torch.randint(0, 0x70, shape, dtype=torch.uint8, device=device)  # 0x7f / 0xff are e4m3 NaN
            parts.append(codes if dtype == "uint8" else codes.view(torch.float8_e4m3fn))
        else:
            parts.append((torch.rand(shape, device=device) * 0.1).to(torch.float16))
    return parts


def max_error(q, kp, vp, kv_len, fmt) -> float:
    """max |compiled kernel - attention_kvq_reference| / max |reference| on the same parts (the reference in fp32,
    on the GPU): the compiled path (fp16 tiles, inline PTX, native e4m3) is what the CPU's interpreter tests
    cannot run.  Relative to the output's scale, since the kernel's output is bf16 (8 bits of mantissa)."""
    from lcc.backends.triton.kv_decode import kvq_decode
    from lcc.ops.kv_cache import attention_kvq_reference

    got = kvq_decode(q, kp, vp, kv_len, D**-0.5, "causal", fmt).float()
    want = attention_kvq_reference(q.float(), kp, vp, kv_len, D**-0.5, "causal", fmt).float()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def wrong(err) -> bool:
    """A format whose output is out of tolerance (``err``: :func:`max_error`; None for the bf16 baseline)."""
    return err is not None and err > TOL


def timed(step) -> tuple[float | None, float | None]:
    """(GPU ms from a CUDA graph, eager ms per call) of one decode step: the same harness for every row."""
    return graph_ms(step), bench_ms(step)


def rows(caches) -> list[tuple]:
    from lcc.backends.triton.decode import flash_decode
    from lcc.backends.triton.kv_decode import kvq_decode
    from lcc.ops.kv_cache import KVQuantFormat

    out = []
    for L in caches:
        q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, HKV, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        kv_len = torch.tensor(L, device="cuda")
        base, eager = timed(lambda: flash_decode(q, k, v, kv_len, D**-0.5, "causal"))
        out.append((L, "bf16", base, eager, 2 * k.numel() * k.element_size(), None, None))
        del k, v
        for spec in FORMATS:
            fmt = KVQuantFormat.parse(spec)
            kp, vp = random_parts(fmt, "k", L), random_parts(fmt, "v", L)
            ms, eager = timed(lambda: kvq_decode(q, kp, vp, kv_len, D**-0.5, "causal", fmt))
            moved = sum(t.numel() * t.element_size() for t in kp + vp)
            err = max_error(q, kp, vp, kv_len, fmt)
            ratio = base / ms if ms and base and not wrong(err) else None  # a wrong kernel's speed is no result
            out.append((L, spec.split(":")[0], ms, eager, moved, ratio, err))
            del kp, vp
        torch.cuda.empty_cache()
    return out


def table(measured) -> str:
    lines = ["| cache | format | GPU ms (graph) | eager call ms | cache bytes read | GB/s | latency vs bf16 "
             "| max error / max output |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for L, name, ms, eager, moved, ratio, err in measured:
        gbs = "n/a" if not ms else f"{moved / ms / 1e6:.0f}"
        lines.append(f"| {L // 1024}k | {name} | {'n/a' if ms is None else f'{ms:.3f}'} | "
                     f"{'n/a' if eager is None else f'{eager:.3f}'} | {moved / 2**20:.1f} MiB | "
                     f"{gbs} | {'' if ratio is None else f'{ratio:.2f}x lower'} | "
                     f"{'' if err is None else f'{err:.1e}' + (' WRONG' if wrong(err) else '')} |")
    return "\n".join(lines)


def verdicts(measured) -> str:
    lines = []
    for L, name, _, _, _, ratio, err in measured:
        if wrong(err):
            lines.append(f"- {name} at {L // 1024}k: WRONG, max error {err:.1e} of the reference's largest output (> {TOL}); "
                         "its time is not a result")
        elif name in ("int8", "fp8"):
            ok = ratio is not None and ratio >= TARGET
            lines.append(f"- {name} at {L // 1024}k: {'n/a' if ratio is None else f'{ratio:.2f}x'} lower latency "
                         f"than bf16 (target >= {TARGET}x): {'met' if ok else 'missed'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caches", default="32k,128k")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    import triton

    import lcc.backends.triton  # noqa: F401  (registers the kernels)

    torch.manual_seed(0)
    measured = rows([parse_length(x) for x in args.caches.split(",")])
    text = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
            f"CUDA {torch.version.cuda}, {datetime.date.today().isoformat()}; B={B} H={H}/{HKV} D={D}, "
            f"bf16 queries; baseline bf16 = lcc's Triton split-K flash_decode; GPU ms = one step from a CUDA graph, "
            f"L2 flushed\n\n{table(measured)}\n\n{verdicts(measured)}\n")
    print(text)
    if args.out:
        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
