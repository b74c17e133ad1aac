"""Regenerate docs/rope.md: smollm2-135m (trained at 8k) with each RoPE method, perplexity and passkey by length.

    python bench/rope_table.py --lengths 8k,16k,32k --passkey-trials 10 --device cuda --tf32

The evaluation (text, windows, prompts, seeds, depths, the scaling factor) is fixed here
before any method is compared; every method runs through the same `lcc eval` code path.
Each run adds its methods' rows to docs/rope.json (so the table can be filled by several
runs, e.g. on a GPU machine in parts: ``--methods none,linear``, then the rest) and
regenerates docs/rope.md and its plots from everything in that file.  A row records the
device and precision it was measured with.  The rows are also stored as quality records in
the user's records file of the weights (``$LCC_CACHE/quality``, as ``lcc quality`` stores them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

METHODS = {
    "none": [],
    "linear": ["rope-scaling:method=linear,factor={f}"],
    "ntk": ["rope-scaling:method=ntk,factor={f}"],
    "dynamic-ntk": ["rope-scaling:method=dynamic-ntk,factor={f}"],
    "yarn": ["rope-scaling:method=yarn,factor={f}"],
    "rerope": ["rerope:window=2048"],
    "leaky-rerope": ["leaky-rerope:window=2048,factor=16"],
    # parameters from the papers relative to the trained length and the program's length (the passes' auto)
    "self-extend": ["self-extend"],
    "dca": ["dca"],
}
TRAINED = 8192


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    n = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {n} thread{'s' * (n != 1)})"


def measure(args, save) -> list[dict]:
    import torch
    import transformers

    import lcc
    from lcc.capture.export import capture
    from lcc.eval import capacity_for, eval_passkey, eval_ppl
    from lcc.passes import apply_passes, canonicalize, parse_pass
    from lcc.runtime import to_device
    from lcc.eval.text import kjv_text
    from lcc.lengths import format_length, parse_lengths
    from lcc.models import load_model
    from lcc.quality.measure import save_rows
    from lcc.quality.records import Row

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True  # also the Triton kernels' fp32 dot precision
    lengths = parse_lengths(args.lengths)
    factor = max(lengths) / TRAINED
    loaded = load_model("smollm2-135m")
    text = kjv_text()
    # one capture for every method: the passes are applied to copies of the same canonical program
    canonical = canonicalize(capture(loaded, capacity_for(max(lengths)),
                                     entries=("prefill", "decode", "prefill_logits")))
    rows = []
    for name in args.methods.split(","):
        if name not in METHODS:
            sys.exit(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
        passes = [p.format(f=f"{factor:g}") for p in METHODS[name]]
        # the remapped-position methods own attention (one fused op per layer); the others add flash
        passes = passes + ["flash"] if name not in ("rerope", "leaky-rerope", "self-extend", "dca") else passes
        t = time.time()
        program = apply_passes(canonical, [parse_pass(p) for p in passes])
        if args.device != "cpu":
            program = to_device(program, args.device)
        ppl = eval_ppl(loaded, passes, lengths, text, windows=args.windows, program=program)
        pk = (eval_passkey(loaded, passes, lengths, trials=args.passkey_trials, program=program)
              if args.passkey_trials else [None] * len(lengths))
        del program
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        secs = time.time() - t
        results = {}
        for n, p, k in zip(lengths, ppl, pk):
            results[format_length(n)] = {"ppl": p.metrics["ppl"], "tokens": p.metrics["tokens"],
                                         **({"passkey": k.metrics["accuracy"], "by_depth": k.metrics["by_depth"],
                                             "trials": k.metrics["trials"]} if k else {})}
        rows.append({
            "method": name, "passes": passes, "factor": factor, "results": results, "seconds": round(secs, 1),
            "device": _device_name(args.device),
            "precision": "fp32" + (" (TF32 matmuls)" if args.tf32 and args.device.startswith("cuda") else ""),
            "windows": args.windows, "date": str(datetime.date.today()),
            "versions": {"lcc": lcc.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        })
        save(rows[-1])
        records_file = save_rows(loaded, [
            Row(tuple(passes), n, p.metrics["ppl"], "first-window", k.metrics["accuracy"] if k else None,
                k.metrics["trials"] * len(k.metrics["by_depth"]) if k else 0, rows[-1]["device"],
                rows[-1]["precision"], rows[-1]["date"], lcc.__version__, "bench/rope_table.py")
            for n, p, k in zip(lengths, ppl, pk)])  # the quality records too, as `lcc quality` writes them
        print(f"{name}: rows added to {records_file}", file=sys.stderr)
        print(f"{name}: " + ", ".join(f"{L} ppl {r['ppl']:.2f}" + (f" passkey {r['passkey']:.2f}" if "passkey" in r
                                                                    else "") for L, r in results.items())
              + f" ({secs:.0f} s)", file=sys.stderr, flush=True)
    return rows


def render(data: list[dict], out: Path, command: str) -> None:
    """docs/rope.md and its plots from every row in the data file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lcc.lengths import parse_lengths

    cols = sorted({L for r in data for L in r["results"]}, key=lambda L: parse_lengths(L)[0])
    order = {m: i for i, m in enumerate(METHODS)}
    data = sorted(data, key=lambda r: order.get(r["method"], 99))
    has_pk = any("passkey" in v for r in data for v in r["results"].values())
    setups = sorted({(r["device"], r["precision"], r["date"], json.dumps(r["versions"], sort_keys=True))
                     for r in data})
    lines = ["# RoPE scaling on smollm2-135m (trained at 8k)", "",
             "Regenerate (each run adds its rows to `docs/rope.json`; this page is rebuilt from all of them):", "",
             "```bash", command, "```", "",
             "The evaluation is fixed in `bench/rope_table.py` and `lcc/eval` before any method is compared: "
             "perplexity over the first window(s) of each length of the KJV Bible (Debian `bible-kjv`), every "
             "position scored; passkey retrieval with a random 5-digit key at depths 0.1, 0.5 and 0.9 of the "
             "prompt, the given number of seeded trials per length and depth, greedy decoding; the scaling "
             "factor s = the longest length / 8192, fixed for every length; every method runs through the "
             "same program path (`flash` attention, or ReRoPE's fused kernel).", "",
             "Measured with:", ""]
    for device, precision, date, versions in setups:
        v = json.loads(versions)
        lines.append(f"- {date}, {device}, {precision}; " + ", ".join(f"{k} {x}" for k, x in v.items()))
    head = "| method | passes | " + " | ".join(f"ppl {c}" for c in cols)
    head += "".join(f" | passkey {c}" for c in cols) if has_pk else ""
    mixed = len({r["device"] for r in data}) > 1  # rows from several machines: say which row ran where
    lines += ["", head + " | time (s) |" + (" measured on |" if mixed else ""),
              "|---|---|" + "---|" * (len(cols) * (2 if has_pk else 1) + 1 + mixed)]
    for r in data:
        res = r["results"]
        cells = [f"{res[c]['ppl']:.2f}" if c in res else "-" for c in cols]
        if has_pk:
            cells += [f"{res[c]['passkey']:.2f}" if c in res and "passkey" in res[c] else "-" for c in cols]
        passes = " ".join(f"`{p}`" for p in r["passes"]) or "-"
        lines.append(f"| {r['method']} | {passes} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |"
                     + (f" {r['device'].removeprefix('NVIDIA ')}, {r['precision']} |" if mixed else ""))

    fig, axes = plt.subplots(1, 2 if has_pk else 1, figsize=(11 if has_pk else 6, 4), squeeze=False)
    for r in data:
        xs = [parse_lengths(c)[0] for c in cols if c in r["results"]]
        axes[0][0].plot(xs, [r["results"][c]["ppl"] for c in cols if c in r["results"]], marker="o",
                        label=r["method"])
        if has_pk:
            pts = [(parse_lengths(c)[0], r["results"][c]["passkey"]) for c in cols
                   if c in r["results"] and "passkey" in r["results"][c]]
            if pts:
                axes[0][1].plot(*zip(*pts), marker="o", label=r["method"])
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel("perplexity (KJV)")
    if has_pk:
        axes[0][1].set_ylabel("passkey accuracy")
        axes[0][1].set_ylim(-0.05, 1.05)
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("length (tokens)")
        ax.axvline(TRAINED, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("smollm2-135m (trained at 8k): RoPE scaling methods")
    fig.tight_layout()
    png = out.with_suffix(".png")
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png)
    missing = [m for m in METHODS if m not in {r["method"] for r in data}]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(missing) + "."]
    no_pk = [r["method"] for r in data if has_pk and not all("passkey" in v for v in r["results"].values())]
    if no_pk:
        lines += ["", "Passkey not measured yet: " + ", ".join(no_pk) + " (its row was run with `--passkey-trials 0`)."]
    lines += ["", f"![perplexity and passkey accuracy by length]({png.name})", ""]
    marker = "<!-- notes: kept when the page is regenerated -->"
    old = out.read_text() if out.is_file() else ""
    lines += [marker + old.split(marker, 1)[1].rstrip("\n")] if marker in old else [marker]
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8k,16k,32k")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--passkey-trials", type=int, default=10, help="0 skips passkey")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's own)")
    ap.add_argument("--tf32", action="store_true", help="fp32 matmuls on TF32 tensor cores (CUDA)")
    ap.add_argument("--out", default="docs/rope.md")
    ap.add_argument("--data", default=None, help="rows file (default: --out with .json)")
    ap.add_argument("--render-only", action="store_true", help="rebuild the page from the data file")
    args = ap.parse_args()
    out = Path(args.out)
    data_path = Path(args.data) if args.data else out.with_suffix(".json")
    data = json.loads(data_path.read_text()) if data_path.is_file() else []
    if not args.render_only:
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                print("no CUDA device: skipping (run with --device cpu for the CPU, which takes hours at 32k)",
                      file=sys.stderr)
                return 0
        def save(row: dict) -> None:  # after each method, so a cut-off run keeps what it measured
            data[:] = [r for r in data if r["method"] != row["method"]] + [row]
            data_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = data_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, data_path)

        measure(args, save)
    command = "python bench/rope_table.py --lengths 8k,16k,32k --passkey-trials 10 --device cuda --tf32"
    render(data, out, command)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
