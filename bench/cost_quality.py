"""Measure sliding-window perplexity on smollm2-135m into ``docs/sliding-window.json``.

Perplexity of SmolLM2-135M on the KJV Bible (Debian's bible-kjv) through the captured
program, with and without the pass, at lengths within the trained context, so the only change
is the pass.  ``bench/quality_records.py`` turns the file (with docs/rope.json and docs/kv.json)
into the quality records that ship with lcc:

    python bench/cost_quality.py [--lengths 2k,4k] [--windows 1] [--out docs]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

# pass name -> the parameter sets measured (each run with attention-chunked, exact, for speed)
CONFIGS = {"sliding-window": [{"window": 256, "sinks": 4}, {"window": 1024, "sinks": 4}]}
HELPER = "attention-chunked:chunk=512"


def main(argv=None) -> None:
    from lcc.capture import capture
    from lcc.eval.ppl import perplexity
    from lcc.eval.text import load_text
    from lcc.lengths import parse_lengths
    from lcc.models import load_model
    from lcc.passes import apply_passes, canonicalize

    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="2k,4k")
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    args = ap.parse_args(argv)
    lengths = parse_lengths(args.lengths)
    loaded = load_model("smollm2-135m")
    ids = loaded.tokenizer(load_text(None), add_special_tokens=False)["input_ids"]
    program = canonicalize(capture(loaded, max(lengths) + 64, entries=("prefill_logits",)))
    baseline = {}
    for n in lengths:
        t = time.time()
        baseline[n] = perplexity(apply_passes(program, [HELPER]), ids, n, args.windows)[0]
        print(f"exact {n}: ppl {baseline[n]:.3f} ({time.time() - t:.0f} s)", flush=True)
    for name, param_sets in CONFIGS.items():
        points = []
        for params in param_sets:
            spec = name + ":" + ",".join(f"{k}={v}" for k, v in params.items())
            rewritten = apply_passes(program, [spec, HELPER])
            for n in lengths:
                t = time.time()
                ppl = perplexity(rewritten, ids, n, args.windows)[0]
                print(f"{spec} {n}: ppl {ppl:.3f} vs {baseline[n]:.3f} ({time.time() - t:.0f} s)", flush=True)
                points.append({"params": params, "length": n, "baseline": round(baseline[n], 4),
                               "value": round(ppl, 4)})
        doc = {"pass": name, "model": loaded.spec.model_id, "weights_hash": loaded.weights_hash,
               "metric": "ppl", "text": "KJV Bible (Debian bible-kjv), first windows",
               "windows": args.windows, "trained_len": loaded.spec.trained_len,
               "measured": datetime.date.today().isoformat(),
               "command": f"python bench/cost_quality.py --lengths {args.lengths} --windows {args.windows}",
               "points": points}
        out = Path(args.out) / f"{name}.json"  # docs/sliding-window.json
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
