"""Quality risk of a pass list, read from measured data shipped in ``lcc/cost/quality/*.json``.

Each file holds one pass's measurements (``bench/cost_quality.py`` writes them): perplexity
of a real model on real text with and without the pass, at several parameter settings and
lengths.  The risk of an approximate pass at a target length is the relative perplexity
increase of the closest measurement that is at least as harsh (for sliding-window: the
ratio length / window), bumped one level when the target is harsher than anything measured.
Exact passes (and approximate ones exact at that length, e.g. a window that covers it)
carry no risk; an approximate pass with no data is "unmeasured".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lcc.passes.base import PassSpec, parse_pass

DATA_DIR = Path(__file__).parent / "quality"
LEVELS = ("none", "low", "medium", "high", "unmeasured")
LIMITS = ((0.01, "low"), (0.05, "medium"))  # relative ppl increase -> level; above the last: high

# pass name -> harshness(params, length): larger is harsher; measurements are matched on it
HARSHNESS: dict[str, Callable[[dict, int], float]] = {
    "sliding-window": lambda p, n: n / max(1, p.get("window", 1) + p.get("sinks", 0)),
}


# pass name -> key(params): only measurements with the spec's key count (the RoPE method, the cache format)
SAME: dict[str, Callable[[dict], object]] = {
    "rope-scaling": lambda p: p.get("method"),
    "kv-quant": lambda p: "fp8" if p.get("format") == "fp8" else f"int{p.get('bits')}",
}


@dataclass(frozen=True)
class Risk:
    level: str
    detail: str

    def __str__(self) -> str:
        return self.level


def load_measurements(directory: Path = DATA_DIR) -> dict[str, dict]:
    out = {}
    for f in sorted(Path(directory).glob("*.json")):
        doc = json.loads(f.read_text())
        out[doc["pass"]] = doc
    return out


def _level(rel: float) -> str:
    for limit, level in LIMITS:
        if rel <= limit:
            return level
    return "high"


def _bump(level: str) -> str:
    return LEVELS[min(LEVELS.index(level) + 1, LEVELS.index("high"))]


def pass_risk(spec: PassSpec, length: int, data: dict[str, dict] | None = None) -> Risk:
    if spec.exact_for(length):
        return Risk("none", f"{spec.name}: exact")
    doc = (load_measurements() if data is None else data).get(spec.name)
    points = (doc or {}).get("points") or []
    same = SAME.get(spec.name)
    if same is not None:
        points = [p for p in points if same(p["params"]) == same(spec.kwargs)]
    if not points:
        return Risk("unmeasured", f"{spec.name}: approximate, no measurements")
    harsh = HARSHNESS.get(spec.name, lambda p, n: float(n))
    target = harsh(spec.kwargs, length)
    scored = sorted(((harsh(p["params"], p["length"]), p) for p in points), key=lambda sp: sp[0])
    above = [sp for sp in scored if sp[0] >= target]
    key, point = above[0] if above else scored[-1]
    rel = point["value"] / point["baseline"] - 1
    level = _level(rel)
    where = f"{doc['metric']} {point['baseline']:.2f} -> {point['value']:.2f} ({rel:+.1%}) on {doc['model']} " \
            f"at {point['length']} tokens, {point['params']}"
    if not above:
        return Risk(_bump(level), f"{spec.name}: extrapolated past the harshest measurement: {where}")
    return Risk(level, f"{spec.name}: {where}")


def plan_risk(passes, length: int, data: dict[str, dict] | None = None) -> Risk:
    """The worst risk of the passes in a list."""
    data = load_measurements() if data is None else data
    risks = [pass_risk(parse_pass(p) if isinstance(p, str) else p, length, data) for p in passes]
    if not risks:
        return Risk("none", "no passes: the captured program")
    worst = max(risks, key=lambda r: LEVELS.index(r.level))
    return Risk(worst.level, "; ".join(r.detail for r in risks if r.level != "none") or worst.detail)


def allowed(level: str, quality: str) -> bool:
    """exact: no risk at all; balanced: measured risk up to medium; any: everything."""
    if quality == "exact":
        return level == "none"
    if quality == "balanced":
        return level in ("none", "low", "medium")
    return True
