"""Regenerate docs/rope.md: smollm2-135m (trained at 8k) with each RoPE method, perplexity and passkey by length.

    python bench/rope_table.py --lengths 8k,16k,32k --passkey-trials 10 --out docs/rope.md

The evaluation (text, windows, prompts, seeds, depths) is fixed here before any method
is compared; every method runs through the same `lcc eval` code path.  On a CPU the
default is the subset that finishes in well under an hour; a GPU machine runs the rest.
"""

from __future__ import annotations

import argparse
import datetime
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
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8k,16k")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--passkey-trials", type=int, default=0, help="0 skips passkey")
    ap.add_argument("--out", default="docs/rope.md")
    args = ap.parse_args()

    import torch
    import transformers

    import lcc
    from lcc.eval import eval_passkey, eval_ppl, plot
    from lcc.eval.text import kjv_text
    from lcc.lengths import format_length, parse_lengths
    from lcc.models import load_model

    lengths = parse_lengths(args.lengths)
    loaded = load_model("smollm2-135m")
    text = kjv_text()
    rows, ppl_curves, pk_curves = [], {}, {}
    started = time.time()
    for name in args.methods.split(","):
        passes = [p.format(f=max(lengths) / loaded.spec.trained_len) for p in METHODS[name]]
        passes = passes + ["flash"] if not name.endswith("rerope") else passes
        t = time.time()
        ppl = eval_ppl(loaded, passes, lengths, text, windows=args.windows)
        pk = eval_passkey(loaded, passes, lengths, trials=args.passkey_trials) if args.passkey_trials else None
        ppl_curves[name] = ppl
        if pk:
            pk_curves[name] = pk
        rows.append((name, passes, ppl, pk, time.time() - t))
        print(f"{name}: {[round(r.metrics['ppl'], 2) for r in ppl]} ({time.time() - t:.0f} s)", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(ppl_curves, "ppl", str(out.with_suffix(".ppl.png")), "smollm2-135m (trained 8k): perplexity")
    cols = [format_length(n) for n in lengths]
    lines = [
        "# RoPE scaling on smollm2-135m (trained at 8k)", "",
        "Regenerate: `python bench/rope_table.py " + " ".join(sys.argv[1:]) + "`", "",
        f"- date {datetime.date.today()}, device: CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), no GPU",
        f"- lcc {lcc.__version__}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"- perplexity: the KJV Bible (Debian bible-kjv), {args.windows} window(s) of each length from the start "
        "of the text, every position scored; factor s = longest length / 8192; rope methods run with `flash`",
        f"- total time {time.time() - started:.0f} s", "",
        "| method | passes | " + " | ".join(f"ppl {c}" for c in cols)
        + ("".join(f" | passkey {c}" for c in cols) if args.passkey_trials else "") + " | time (s) |",
        "|---|---|" + "---|" * len(cols) * (2 if args.passkey_trials else 1) + "---|",
    ]
    for name, passes, ppl, pk, secs in rows:
        cells = [f"{r.metrics['ppl']:.2f}" for r in ppl]
        if pk:
            cells += [f"{r.metrics['accuracy']:.2f}" for r in pk]
        lines.append(f"| {name} | {' '.join(f'`{p}`' for p in passes) or '-'} | " + " | ".join(cells)
                     + f" | {secs:.0f} |")
    lines += ["", f"![perplexity]({out.with_suffix('.ppl.png').name})", ""]
    out.write_text("\n".join(lines))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
