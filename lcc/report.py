"""The compile report: report.json, report.md (plan and pass-by-pass diff tables) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path


def _md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_stage_errors(stages: list[dict], path: Path) -> None:
    """Max abs logit error and KL per stage against HF eager (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["name"].split(":")[0] if len(s["name"]) > 24 else s["name"] for s in stages[1:]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(names))
    floor = 1e-16
    for offset, key, label in ((-0.2, "max_abs", "max abs logit"), (0.2, "kl", "KL")):
        values = [s[key] for s in stages[1:]]
        ax.bar([x + offset for x in xs], [max(v, floor) for v in values], width=0.4, label=label)
        for x, v in zip(xs, values):
            if v == 0:
                ax.text(x + offset, floor * 3, "0", ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
    ax.set_title("error per stage against HF eager")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cost_section(cost: dict | None, out: Path) -> list[str]:
    """Predicted peak memory and prefill time against length (lcc.cost), for the plan and for no passes."""
    if not cost or not (out / "cost.png").exists():
        return []
    from lcc.lengths import format_length
    from lcc.ui import human_bytes, human_seconds

    labels = list(cost["curves"])
    headers = ["length"] + [f"{k}: {m}" for k in labels for m in ("memory", "prefill")]
    rows = []
    for i, n in enumerate(cost["lengths"]):
        row = [format_length(n)]
        for k in labels:
            e = cost["curves"][k][i]
            row += [human_bytes(e["memory"]), "-" if e["prefill_time"] is None else human_seconds(e["prefill_time"])]
        rows.append(row)
    return [f"## Predicted cost on {cost['device']} (lcc.cost: roofline time, peak memory)", "",
            _md_table(headers, rows), "", "![cost vs length](cost.png)", ""]


def approximate_notes(stages: list[dict]) -> list[str]:
    """One line per approximate pass stage: what the pass does to the model, in its own words."""
    from lcc.passes import REGISTRY

    notes = []
    for s in stages:
        d = REGISTRY.get(s["name"].split(":")[0])
        if d is not None and not s["exact"]:
            notes.append(f"- `{s['name']}` is approximate: {d.doc}. Its distance above is the rewrite's "
                         "effect on the model, reported, not a failure.")
    return notes


def quality_section(plan: dict, target_len: int) -> list[str]:
    """The chosen plan's quality at the target: its figures, as ratios to the unmodified model at its
    trained length, and where they came from (a record with its device and date, a prior, or exact)."""
    from lcc.lengths import format_length

    est = plan.get("quality_at_target")
    head = [f"## Quality at {format_length(target_len)}", ""]
    if plan.get("source") != "planner":
        return head + ["passes given on the command line: the planner did not judge them; "
                       "`lcc eval ARTIFACT --task passkey|ppl` measures this artifact.", ""]
    if not est:
        return head + ["unmeasured", ""]
    rows = [["perplexity", _fmt(est.get("ppl")), _fmt(est.get("ppl_ratio"))],
            ["passkey accuracy", _fmt(est.get("passkey")), _fmt(est.get("retrieval_ratio"))]]
    return head + [f"chosen with --quality {plan.get('quality')}; figures from: {est.get('source')}"
                   f"{' (extrapolated)' if est.get('extrapolated') else ''}: {est.get('detail')}", "",
                   _md_table(["metric", "value", "x the unmodified model at its trained length"], rows), ""]


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def write_json(out: Path, report: dict) -> None:
    """``report.json`` of the artifact in ``out`` (written again at the end of a compile: the report stage's time)."""
    (Path(out) / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def write_report(out: Path, manifest, report: dict) -> None:
    """report.json, report.md and errors.png of the artifact in ``out`` (``manifest``: its lcc.artifact.Manifest)."""
    out = Path(out)
    write_json(out, report)
    stages = report["stages"]
    parts = [f"# lcc compile report: {manifest.model_id} at {manifest.target_len} tokens, "
             f"backend {manifest.backend}", ""]
    plan = report.get("plan", {})
    parts += ["## Plan", "", f"passes: {', '.join(plan.get('passes') or ['(none)'])}", "",
              f"reason: {plan.get('reason', '')}", ""]
    parts += quality_section(plan, manifest.target_len)
    if plan.get("candidates"):
        keys = list(plan["candidates"][0].keys())
        parts += [_md_table(keys, [[c[k] for k in keys] for c in plan["candidates"]]), ""]
    parts += ["## Stages (against HF eager)", "",
              _md_table(["stage", "kind", "max abs", "rel", "cosine", "KL", "top-1", "first div. layer", "ok"],
                        [[s["name"], "exact" if s["exact"] else "approx", f"{s['max_abs']:.2e}", f"{s['rel']:.2e}",
                          f"{s['cosine']:.6f}", f"{s['kl']:.2e}", f"{s['top1']:.3f}",
                          s["first_divergent_layer"] if s["first_divergent_layer"] is not None else "-",
                          "yes" if s["ok"] else "NO"] for s in stages]), ""]
    notes = approximate_notes(stages)
    if notes:
        parts += notes + [""]
    low = report["lowered"]
    check = (f"unchecked ({low['unchecked']}): run `lcc diff` where the target runs" if "unchecked" in low else
             f"max abs logit error against the rewritten program {low['max_abs']:.2e}, top-1 agreement "
             f"{low['top1']:.3f}")
    parts += ["## Lowering", "", f"{low['name']}: {check}", ""]
    native = manifest.lowering["native"]
    parts += [_md_table(["op", "implementation"], [[k, v] for k, v in sorted(native.items())]), ""]
    if manifest.lowering["fallbacks"]:
        parts += ["Ops without a native lowering (run as their reference decomposition): "
                  + ", ".join(manifest.lowering["fallbacks"]), ""]
    plot_stage_errors(stages, out / "errors.png")
    parts += ["![error per stage](errors.png)", ""]
    parts += _cost_section(report.get("cost"), out)
    (out / "report.md").write_text("\n".join(parts))
