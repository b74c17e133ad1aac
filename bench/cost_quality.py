"""Measure the quality data the cost model's risk column reads (``lcc/cost/quality/*.json``).

Perplexity of SmolLM2-135M on the KJV Bible (Debian's bible-kjv) through the captured
program, with and without each approximate pass, at lengths within the trained context, so
the only change is the pass.  Writes one JSON file per pass:

    python bench/cost_quality.py [--lengths 2k,4k] [--windows 1] [--out lcc/cost/quality]

``--from-docs`` instead turns the RoPE and KV tables' measurements (docs/rope.json from
bench/rope_table.py, docs/kv.json from bench/kv.py) into the same files: each method or cache
format against the unscaled model / the full-precision cache at the same length.  These are not
shipped yet: with them the planner picks kv-quant + flash at 128k on h100 and rerope at 32k on
the CPU (rerope's cost is its fused kernel's, not the CPU reference's), which needs a decision on
how risk past the trained length is judged first.
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


ROOT = Path(__file__).resolve().parents[1]
KV_LABELS = {"int8 KIVI": {"bits": 8, "format": "int"}, "int4 KIVI": {"bits": 4, "format": "int"},
             "int2 KIVI": {"bits": 2, "format": "int"}, "fp8 e4m3": {"format": "fp8"}}


def from_docs(out: Path) -> None:
    from lcc.lengths import parse_lengths

    common = {"model": "smollm2-135m", "metric": "ppl", "text": "KJV Bible (Debian bible-kjv), first windows",
              "trained_len": 8192}
    rope = json.loads((ROOT / "docs" / "rope.json").read_text())
    base = {L: v["ppl"] for r in rope if r["method"] == "none" for L, v in r["results"].items()}
    docs = {}
    for r in rope:
        if r["method"] == "none":
            continue
        name = r["method"] if r["method"].endswith("rerope") else "rope-scaling"  # the pass that ran
        spec = r["passes"][0]
        params = dict(kv.split("=") for kv in spec.partition(":")[2].split(",") if kv)
        params = {k: (float(v) if k == "factor" else int(v) if v.isdigit() else v) for k, v in params.items()}
        doc = docs.setdefault(name, {"pass": name, **common, "windows": r["windows"], "measured": r["date"],
                                     "command": "python bench/rope_table.py (docs/rope.md), then "
                                                "python bench/cost_quality.py --from-docs",
                                     "baseline": "the unscaled model at the same length", "points": []})
        for L, v in r["results"].items():
            if L in base:
                doc["points"].append({"params": params, "length": parse_lengths(L)[0],
                                      "baseline": round(base[L], 4), "value": round(v["ppl"], 4)})
    kv = json.loads((ROOT / "docs" / "kv.json").read_text())["ppl"]
    full = {r["length"]: r["ppl"] for r in kv["rows"] if r["label"].startswith("fp32")}
    docs["kv-quant"] = {"pass": "kv-quant", **common, "windows": kv.get("windows", 1),
                        "measured": kv.get("date", "2026-11-24"),
                        "command": "python bench/kv.py (docs/kv.md), then python bench/cost_quality.py --from-docs",
                        "baseline": "the captured fp32 cache at the same length",
                        "points": [{"params": KV_LABELS[r["label"]], "length": r["length"],
                                    "baseline": round(full[r["length"]], 4), "value": round(r["ppl"], 4)}
                                   for r in kv["rows"] if r["label"] in KV_LABELS and r["length"] in full]}
    for name, doc in docs.items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path} ({len(doc['points'])} points)")


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
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "lcc" / "cost" / "quality"))
    ap.add_argument("--from-docs", action="store_true", help="write the RoPE and KV tables' data instead")
    args = ap.parse_args(argv)
    if args.from_docs:
        return from_docs(Path(args.out))
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
        out = Path(args.out) / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
