"""Benchmark lcc's Triton attention kernels against torch SDPA (flash, cuDNN) and FlexAttention.

Prefill: forward time and TFLOP/s, B=1, H=32, D=128, bf16, causal, L = 4k..128k; sliding
window 4096 at 128k; all in the same run.  Decode: one query against a 32k and a 128k
cache (GQA 32/8), in GB/s of K/V read against the measured copy bandwidth.  FLOPs count
4*D per kept (query, key) pair (``lcc.attention``'s cost model).  Prints a markdown table
(and writes it with ``--out``); exits 0 with "skipped: no CUDA" where there is no GPU.

    python bench/attention.py [--lengths 4k,16k] [--out bench.md]
"""

from __future__ import annotations

import argparse
import sys

import torch

B, H, HKV_DECODE, D = 1, 32, 8, 128
DTYPE = torch.bfloat16


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


def sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, **kw):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)

    return run


def flex(mask_mod, L, Lk=None):
    """FlexAttention (compiled) with a block mask built from the same kind of predicate."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(mask_mod, None, None, L, Lk or L, device="cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v, **kw: compiled(q, k, v, block_mask=block_mask, **kw)


def prefill_rows(lengths, window):
    from torch.nn.attention import SDPBackend

    from lcc.backends.triton.attention import flash_attention
    from lcc.ops.attention import mask_pairs

    rows = []
    cases = [("causal", L, "causal", lambda b, h, q, kv: q >= kv) for L in lengths]
    sliding = f"sliding:window={window},sinks=0"
    cases.append((f"sliding w={window}", max(lengths), sliding,
                   lambda b, h, q, kv: (q >= kv) & (q - kv < window)))
    for name, L, mask, mask_mod in cases:
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=DTYPE) for _ in range(3))
        pairs = int(mask_pairs(mask, L, L)) if mask == "causal" else \
            int(torch.arange(1, L + 1).clamp(max=window).sum())  # exact; the op's sliding count is a bound
        flops = 4 * D * B * H * pairs
        impls = {"lcc triton": lambda: flash_attention(q, k, v, None, D**-0.5, mask)}
        if mask == "causal":
            impls["sdpa flash"] = lambda: sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v, is_causal=True)
            impls["sdpa cudnn"] = lambda: sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v, is_causal=True)
        flex_fn = flex(mask_mod, L)
        impls["flex attention"] = lambda: flex_fn(q, k, v)
        if L <= 16384:  # check the kernel where a dense reference fits
            ref = flex_fn(q, k, v)
            err = (flash_attention(q, k, v, None, D**-0.5, mask).float() - ref.float()).abs().max().item()
            print(f"  {name} L={L}: max |lcc - flex| = {err:.2e}", file=sys.stderr)
        for impl, fn in impls.items():
            ms = bench_ms(fn)
            rows.append((f"prefill {name}", L, impl, ms, None if ms is None else flops / ms / 1e9, "TFLOP/s"))
        del q, k, v
    return rows


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
    rows = [("copy bandwidth (reference)", 0, "torch copy_", None, peak, "GB/s")]
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
            ms = bench_ms(fn)
            gbs = None if ms is None else moved / ms / 1e6
            rows.append(("decode causal", L, impl, ms, gbs, f"GB/s ({100 * gbs / peak:.0f}% of copy)" if gbs else ""))
        ms = bench_ms(lambda: flash_decode(q, k, v, None, D**-0.5, f"sliding:window={window},sinks=4"))
        moved_w = 2 * min(L, window + 4) * HKV_DECODE * D * k.element_size()
        rows.append((f"decode sliding w={window}", L, "lcc triton decode", ms, None if ms is None else
                     moved_w / ms / 1e6, "GB/s"))
    return rows


def table(rows) -> str:
    lines = ["| case | L | implementation | ms | throughput | unit |", "|---|---:|---|---:|---:|---|"]
    for case, L, impl, ms, value, unit in rows:
        ms_s = "n/a" if ms is None else f"{ms:.3f}"
        val_s = "n/a" if value is None else f"{value:.1f}"
        lines.append(f"| {case} | {L // 1024 if L else ''}{'k' if L else ''} | {impl} | {ms_s} | {val_s} | {unit} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4k,16k,64k,128k")
    ap.add_argument("--caches", default="32k,128k")
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    import lcc.backends.triton  # noqa: F401  (registers the kernels)

    torch.manual_seed(0)
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    caches = [parse_length(x) for x in args.caches.split(",")]
    rows = prefill_rows(lengths, args.window) + decode_rows(caches, args.window)
    text = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, B={B} H={H} D={D} bf16\n\n{table(rows)}\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
