"""Build smollm2-135m's shipped quality records (``lcc/quality/data/<weights_hash>.json``) from the
measurement files, never by hand:

- ``docs/rope.json`` (``bench/rope_table.py``): perplexity over the first window and passkey
  accuracy per method and length; each row keeps its exact pass list (the fixed-s table
  measured s = 4 at every length, which is the planner's factor convention at 32k);
- ``docs/kv.json`` (``bench/kv.py``): perplexity at 4k and passkey at 8k per cache format;
- ``docs/sliding-window.json`` (``bench/cost_quality.py``): sliding-window perplexity.

    python bench/quality_records.py [--check]

``--check`` rebuilds in memory and exits 1 if the shipped file differs (tests run it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcc.quality.records import SHIPPED, Records, Row  # noqa: E402

MODEL, WEIGHTS_HASH, TRAINED_LEN = "smollm2-135m", "b179c9523d0e6a0f", 8192
KV_PASSES = {"fp32 cache (captured)": [], "int8 KIVI": ["kv-quant:bits=8"], "int4 KIVI": ["kv-quant:bits=4"],
             "int2 KIVI": ["kv-quant:bits=2"], "fp8 e4m3": ["kv-quant:format=fp8"]}  # bench/kv.py's FORMATS


def _length(label: str) -> int:
    from lcc.lengths import parse_length

    return parse_length(label)


def rope_rows(doc: list) -> list[Row]:
    rows = []
    for entry in doc:
        for label, r in entry["results"].items():
            trials = (r.get("trials") or 0) * len(r.get("by_depth") or {})
            common = (entry["device"], entry.get("precision", "fp32"), entry["date"], entry["versions"]["lcc"],
                      "docs/rope.json (bench/rope_table.py)")
            rows.append(Row(tuple(entry["passes"]), _length(label), r.get("ppl"), "first-window", r.get("passkey"),
                            trials, *common))
            if r.get("ppl_last") is not None:  # the loss on the text's final 4096 tokens (bojone/rerope's protocol)
                rows.append(Row(tuple(entry["passes"]), _length(label), r["ppl_last"], "last-4096", None, 0, *common))
    # where two rows measure the same program (e.g. self-extend with group 1 at 8k is the unmodified model), the
    # one with more passkey trials is merged last and wins
    return sorted(rows, key=lambda row: row.passkey_trials)


def kv_rows(doc: dict) -> list[Row]:
    rows, machine = [], doc.get("passkey", {}).get("machine", {}).get("cpu", "CPU")
    for r in doc.get("ppl", {}).get("rows", []):
        if r["label"] in KV_PASSES:
            rows.append(Row(tuple(KV_PASSES[r["label"]] + ["flash"]), r["length"], r["ppl"], "first-window", None, 0,
                            machine, "fp32", "2026-11-24", "0.1.0", "docs/kv.json (bench/kv.py)"))
    for r in doc.get("passkey", {}).get("rows", []):
        if r["label"] in KV_PASSES:
            rows.append(Row(tuple(KV_PASSES[r["label"]] + ["flash"]), r["length"], None, "first-window",
                            r["accuracy"], r["trials"], machine, "fp32", "2026-11-25", "0.1.0",
                            "docs/kv.json (bench/kv.py)"))
    return rows


def sliding_rows(doc: dict) -> list[Row]:
    rows = []
    for p in doc["points"]:
        args = ",".join(f"{k}={v}" for k, v in p["params"].items())
        for passes, value in (((f"sliding-window:{args}",), p["value"]), ((), p["baseline"])):
            rows.append(Row(passes, p["length"], value, "first-window", None, 0, "CPU", "fp32", doc["measured"],
                            "0.1.0", f"docs/sliding-window.json ({doc['command']})"))
    return rows


def build() -> Records:
    rec = Records(MODEL, WEIGHTS_HASH, TRAINED_LEN)
    rec.merge(sliding_rows(json.loads((ROOT / "docs/sliding-window.json").read_text())))
    rec.merge(kv_rows(json.loads((ROOT / "docs/kv.json").read_text())))
    rec.merge(rope_rows(json.loads((ROOT / "docs/rope.json").read_text())))  # H100 rows last: they win
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the shipped file is not what the sources give")
    args = ap.parse_args()
    rec = build()
    path = SHIPPED / f"{WEIGHTS_HASH}.json"
    text = json.dumps(rec.to_dict(), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'up to date' if same else 'stale: run python bench/quality_records.py'}")
        return 0 if same else 1
    rec.write(path)
    print(f"wrote {path}: {len(rec.rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
