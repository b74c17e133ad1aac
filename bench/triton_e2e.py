"""SmolLM2-135M on a CUDA GPU: lcc's Triton backend (AOTInductor packages) vs transformers eager + SDPA.

Both bf16 on the same GPU in the same run.  The lcc side is the canonical program of the model
cast to bf16 (cache bf16), lowered by ``lcc.backends.triton.compile`` (the lcc ops as triton_ops:
flash attention with block skipping for prefill, split-K flash decoding for decode; everything
else Inductor), one AOTInductor package per entry, prefill with a symbolic length; it is
reloaded with ``aoti_load_package`` and called with device tensors.  The anchor is the HF
module (``attn_implementation="sdpa"``, DynamicCache, ``logits_to_keep=1``).

Prefill tokens/s at each length (one forward over the prompt), decode tokens/s (greedy steps
after a prompt of ``--decode-context`` tokens), ratios lcc / transformers, and a greedy-token
agreement check, written as a markdown table to ``--out`` (and a PNG beside it).  A failure at
one length (compile, run, memory) is written into its cells; the rest still runs.  Without
CUDA it prints why and exits 0.

    python bench/triton_e2e.py --out BENCH.md [--model smollm2-135m] [--lengths 512,2k,8k,32k]
                               [--decode-context 512] [--decode-steps 64] [--static]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcc.lengths import format_length, parse_length  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    return (text[:160] + "...") if len(text) > 160 else text


def timed(fn, min_seconds: float = 0.3, max_reps: int = 10) -> float:
    """Seconds per call: one warm-up call, then repeats until ``min_seconds`` (CUDA-synchronised)."""
    fn()
    torch.cuda.synchronize()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        torch.cuda.synchronize()
        if time.perf_counter() - t0 >= min_seconds or reps >= max_reps:
            return (time.perf_counter() - t0) / reps


def build_program(model: str, capacity: int):
    """The canonical program of ``model`` in bf16 (weights and cache), and the fp32 HF module's loader."""
    from lcc.capture import capture
    from lcc.models import load_model
    from lcc.passes import canonicalize

    loaded = load_model(model)
    bf16 = replace(loaded, model=loaded.model.to(torch.bfloat16), spec=replace(loaded.spec, dtype="bfloat16"))
    return loaded, canonicalize(capture(bf16, capacity=capacity))


def compile_all(model: str, capacity: int, work: Path, static_lengths: list[int] | None, configs: dict,
                device: str = "cuda") -> None:
    """Capture and compile every package into ``work``, recording each step in ``status.json``.

    Runs in a child process (``--compile-into``), so a crash in a compiler leaves a status behind.
    """
    import json

    from lcc.backends.triton.compile import compile_entry

    status_file = work / "status.json"
    status: dict = {}

    def record(key, value):
        status[key] = value
        status_file.write_text(json.dumps(status, indent=1))

    log(f"capture {model} (bf16, cache capacity {capacity})")
    _, program = build_program(model, capacity)
    keys = [("decode", None)] + [("prefill" if n is None else f"prefill@{n}", n) for n in (static_lengths or [None])]
    for key, n in keys:
        record(key, {"state": "compiling"})
        t0 = time.perf_counter()
        try:
            compile_entry(program, key.split("@")[0], work / f"{key}.pt2", device, configs, seq_len=n)
            record(key, {"state": "ok", "seconds": round(time.perf_counter() - t0, 1)})
        except Exception as e:
            traceback.print_exc()
            record(key, {"state": "error", "error": short_error(e)})
        log(f"compiled {key}: {status[key]}")


class LccSide:
    """The Triton-backend packages, compiled in a child process and loaded here."""

    def __init__(self, args, spec, capacity: int, work: Path, static_lengths: list[int] | None):
        import json
        import subprocess

        from torch._inductor import aoti_load_package

        from lcc.capture.program import CacheLayout

        self.static = bool(static_lengths)
        self.layout = CacheLayout(1, capacity, spec.layers, spec.kv_heads, spec.head_dim, "bfloat16")
        cmd = [sys.executable, "-X", "faulthandler", __file__, "--out", args.out, "--model", args.model,
               "--compile-into", str(work), "--capacity", str(capacity)]
        cmd += ["--static", "--lengths", args.lengths] if static_lengths else []
        cmd += [x for kv in args.inductor_config for x in ("--inductor-config", kv)]
        try:
            r = subprocess.run(cmd, timeout=args.compile_timeout)
            died = "" if r.returncode == 0 else f"compiler process exited with {r.returncode}"
        except subprocess.TimeoutExpired:
            died = f"compiler process timed out after {args.compile_timeout} s"
        status = json.loads((work / "status.json").read_text()) if (work / "status.json").is_file() else {}
        self.seconds, self.errors, self.packages = {}, {}, {}
        for key in ["decode"] + (["prefill"] if not static_lengths else [f"prefill@{n}" for n in static_lengths]):
            st = status.get(key, {"state": "not reached"})
            if st["state"] == "ok":
                try:
                    self.packages[key] = aoti_load_package(str(work / f"{key}.pt2"))
                    self.seconds[key] = st["seconds"]
                    continue
                except Exception as e:
                    traceback.print_exc()
                    st = {"state": "error", "error": f"load: {short_error(e)}"}
            why = st.get("error") or f"{st['state']}" + (f" ({died})" if died else "")
            self.errors[key] = f"compile {key}: {why}"
            log(self.errors[key])

    def _package(self, key: str):
        if key in self.packages:
            return self.packages[key]
        raise RuntimeError(self.errors.get(key, f"no package {key}"))

    def runner(self, n: int):
        return self._package(f"prefill@{n}" if self.static else "prefill")

    def run_prefill(self, ids):
        return self.runner(ids.shape[1])(ids, *self.layout.empty("cuda"))

    def generate(self, ids, steps: int) -> list[int]:
        decode = self._package("decode")
        logits, *cache = self.run_prefill(ids)
        token, out = logits[:, -1].argmax(-1), []
        for i in range(steps):
            out.append(token)
            logits, *cache = decode(token.view(1, 1), torch.tensor(ids.shape[1] + i, device="cuda"), *cache)
            token = logits[:, -1].argmax(-1)
        return [int(t) for t in out]


class HfSide:
    def __init__(self, loaded):
        model = loaded.model.to("cuda", torch.bfloat16).eval()
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("sdpa")
        else:
            model.config._attn_implementation = "sdpa"
        self.model = model

    def run_prefill(self, ids):
        return self.model(ids, use_cache=True, logits_to_keep=1)

    def generate(self, ids, steps: int) -> list[int]:
        out = self.run_prefill(ids)
        cache, token, tokens = out.past_key_values, out.logits[:, -1].argmax(-1), []
        for _ in range(steps):
            tokens.append(token)
            out = self.model(token.view(1, 1), past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1)
        return [int(t) for t in tokens]


def prompt(loaded, n: int) -> torch.Tensor:
    from lcc.data import sample_ids

    return torch.tensor([sample_ids(loaded.tokenizer, n, loaded.spec.vocab)], device="cuda")


def measure(side, what: str, loaded, n: int, steps: int) -> tuple[float | None, str]:
    """(tokens/s, '') or (None, error) for prefill at ``n`` tokens or ``steps`` decode steps after ``n``."""
    try:
        ids = prompt(loaded, n)
        with torch.inference_mode():
            if what == "prefill":
                return n / timed(lambda: side.run_prefill(ids)), ""
            side.generate(ids, 2)  # warm-up
            torch.cuda.synchronize()
            t_prefill = timed(lambda: side.run_prefill(ids), 0.0, 1)
            t0 = time.perf_counter()
            side.generate(ids, steps)
            torch.cuda.synchronize()
            return steps / max(1e-9, time.perf_counter() - t0 - t_prefill), ""
    except Exception as e:
        traceback.print_exc()
        torch.cuda.empty_cache()
        return None, short_error(e)


def fmt(x: float | None, err: str) -> str:
    return f"{x:,.0f}" if x is not None else f"error: {err}"


def write_plot(rows, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no PNG")
        return
    labels = [r[0] for r in rows]
    ratios = [(r[1] / r[3]) if r[1] and r[3] else 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, ratios, color="tab:blue")
    ax.axhline(1.0, color="gray", lw=1, ls="--")
    ax.set_ylabel("tokens/s, lcc triton / transformers sdpa")
    ax.set_title("SmolLM2-135M bf16, same GPU")
    for i, r in enumerate(ratios):
        ax.text(i, r, f"{r:.2f}x", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    log(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="512,2k,8k,32k")
    ap.add_argument("--decode-context", default="512")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--static", action="store_true", help="one prefill package per length instead of one dynamic")
    ap.add_argument("--work", default=None, help="where the packages go (default: a temporary directory)")
    ap.add_argument("--inductor-config", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Inductor setting for the packages, e.g. triton.autotune_at_compile_time=False")
    ap.add_argument("--compile-timeout", type=int, default=300, help="seconds the compiler process may take")
    ap.add_argument("--compile-into", default=None, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--capacity", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("skip: no CUDA GPU here (bench/triton_e2e.py measures the Triton backend on a GPU)")
        return 0
    import transformers
    import triton

    lengths = [parse_length(x) for x in args.lengths.split(",")]
    ctx, steps = parse_length(args.decode_context), args.decode_steps
    capacity = max(lengths + [ctx]) + steps + 8
    if args.compile_into:
        configs = {k: {"True": True, "False": False}.get(v, v) for k, v in
                   (kv.split("=", 1) for kv in args.inductor_config)}
        compile_all(args.model, args.capacity, Path(args.compile_into), lengths if args.static else None, configs)
        return 0
    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="lcc-triton-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"compile (AOTInductor, cuda) into {work}, in a child process")
    from lcc.models import load_model

    loaded = load_model(args.model)
    lcc = LccSide(args, loaded.spec, capacity, work, lengths if args.static else None)
    hf = HfSide(loaded)
    rows = []  # (label, lcc tok/s, lcc error, hf tok/s, hf error)
    for n in lengths:
        a, ea = measure(lcc, "prefill", loaded, n, steps)
        b, eb = measure(hf, "prefill", loaded, n, steps)
        rows.append((f"prefill {format_length(n)}", a, ea, b, eb))
        log(f"{rows[-1]}")
    a, ea = measure(lcc, "decode", loaded, ctx, steps)
    b, eb = measure(hf, "decode", loaded, ctx, steps)
    rows.append((f"decode @{format_length(ctx)}", a, ea, b, eb))
    log(f"{rows[-1]}")
    try:
        ids = prompt(loaded, ctx)
        with torch.inference_mode():
            mine, theirs = lcc.generate(ids, 32), hf.generate(ids, 32)
        same = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), len(mine))
        agreement = f"greedy tokens after a {format_length(ctx)}-token prompt: first {same}/32 identical"
        if same < 32:
            agreement += f" (lcc {mine[same:same + 4]}, transformers {theirs[same:same + 4]} from there)"
    except Exception as e:
        traceback.print_exc()
        agreement = f"greedy agreement check failed: {short_error(e)}"
    print(agreement)
    total = time.perf_counter() - started
    date = datetime.date.today().isoformat()
    lines = [
        f"### lcc triton backend vs transformers eager + SDPA, {args.model}, bf16 ({date})",
        "",
        f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}, "
        f"transformers {transformers.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}.",
        f"lcc: AOTInductor packages ({'one prefill per length' if args.static else 'prefill, symbolic length'}), "
        f"compile {', '.join(f'{k} {v:.0f} s' for k, v in lcc.seconds.items())}; "
        f"transformers: `attn_implementation=\"sdpa\"`, DynamicCache, `logits_to_keep=1`.",
        f"Decode: {steps} greedy steps after a {format_length(ctx)}-token prompt. Whole run {total:.0f} s.",
        "",
        "| | lcc triton (tokens/s) | transformers sdpa (tokens/s) | lcc / transformers |",
        "|---|---:|---:|---:|",
    ]
    for label, a, ea, b, eb in rows:
        ratio = f"{a / b:.2f}x" if a and b else "-"
        lines.append(f"| {label} | {fmt(a, ea)} | {fmt(b, eb)} | {ratio} |")
    lines += ["", agreement, ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    log(f"wrote {out}")
    write_plot(rows, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
