"""``lcc cost``, ``lcc plan`` and ``lcc calibrate``: plain typer-compatible functions (registered by lcc.cli).

Input is checked before any slow work (loading, capture): an unknown device, a bad length,
memory size, quality or pass is a :class:`lcc.errors.UsageError` with one line saying what
would be right.
"""

from __future__ import annotations

import json
import re
from typing import Optional

import typer

from lcc.errors import UsageError
from lcc.quality.rank import check_quality
from lcc.ui import human_bytes, human_count, human_seconds, optional, out, status, table

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
CHUNKED_PREFILL = 4096  # chunk size the cost table prices chunked prefill at


def parse_memory(text: str) -> float:
    """``80GB`` (10^9), ``80GiB`` or ``80G`` (2^30), ``512MiB``, or plain bytes."""
    m = _MEM_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"bad memory size {text!r}: use a positive number with a unit, e.g. 80GB, 24GiB, 512MiB")
    return float(m.group(1)) * _UNITS[unit]


def _profile(device: str):
    from lcc.cost.hardware import load_profile

    return load_profile(device)


def _check_png(path: Optional[str]) -> None:
    if path is not None:
        from lcc.outdir import check_output_file

        check_output_file(path, "--plot", ".png")


def _program(model: str, dtype: str = "float32"):
    from lcc.capture import capture
    from lcc.cost.planner import CAPTURE_CAPACITY
    from lcc.models import load_model
    from lcc.passes import canonicalize

    with status(f"loading and capturing {model}"):
        loaded = load_model(model, dtype, weights=False)  # shapes and dtypes are all the cost model reads
        return loaded, canonicalize(capture(loaded, CAPTURE_CAPACITY, entries=("prefill", "decode")))


def _curve_lengths(top: int) -> list[int]:
    n, out = 1024, []
    while n < top:
        out.append(n)
        n *= 2
    return out + [top]


def _profile_name(profile: Optional[str], target: Optional[str], device: Optional[str]) -> str:
    """--profile, else the --target's default (lcc.target); the old --device is read as --profile."""
    from lcc.target import default_profile, device_alias, parse_target

    profile, target = device_alias(device, profile, target, "profile")
    return profile or default_profile(parse_target(target))


def cost(model: str = typer.Argument("smollm2-135m", help="preset, HF directory (config.json is enough), hub id "
                                    "or .gguf file"),
         lengths: str = typer.Option("4k,32k,128k", "--lengths", help="comma-separated lengths, e.g. 4k,32k,128k"),
         passes: Optional[list[str]] = typer.Option(None, "--pass", "-p", help="NAME[:KEY=VALUE,...], repeatable"),
         profile_name: Optional[str] = typer.Option(None, "--profile", help="hardware profile for times: cpu, gpu "
                                                    "(see lcc calibrate), h100, h200, a100-80gb, l40s, rtx4090 "
                                                    "(default: the target's)"),
         target: Optional[str] = typer.Option(None, "--target", help="cpu (default) or cuda: picks the default "
                                              "--profile"),
         device: Optional[str] = typer.Option(None, "--device", hidden=True, help="old name of --profile"),
         plot: Optional[str] = typer.Option(None, "--plot", help="write memory and time vs length to this PNG"),
         as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Symbolic cost of the program: FLOPs, bytes, memory and roofline time as formulas of L, at each length.

    A context-parallel program is priced per rank, its collectives' time over the profile's link included."""
    from lcc.cost.comm import cache_slots
    from lcc.cost.model import ATTENTION_ALGOS, program_cost
    from lcc.cost.symbols import L, pretty
    from lcc.lengths import format_length, parse_lengths
    from lcc.passes import apply_passes, parse_pass

    ns = parse_lengths(lengths)
    specs = [parse_pass(p) for p in passes or []]
    _check_png(plot)
    profile = _profile(_profile_name(profile_name, target, device))
    loaded, base = _program(model)
    program = apply_passes(base, specs)
    pc = program_cost(program, profile.kind)
    evs = [pc.evaluate(n, profile) for n in ns]
    chunked = [pc.chunked_prefill(n, CHUNKED_PREFILL, profile) for n in ns]
    ws = {algo: [pc.attention_working_sets(n, (algo,)).get(algo) for n in ns] for algo in ATTENTION_ALGOS}
    formulas = pc.formulas()
    formulas["activations_at_peak"] = pc.activation_formula(max(ns))
    label = " + ".join(str(s) for s in specs) or "no passes"
    if plot:
        from lcc.cost.plot import plot_cost

        curves = {label: [pc.evaluate(n, profile) for n in _curve_lengths(max(ns))]}
        if specs:
            bare = program_cost(base, profile.kind)
            curves["no passes"] = [bare.evaluate(n, profile) for n in _curve_lengths(max(ns))]
        plot_cost(curves, plot, f"{loaded.spec.model_id} on {profile.name}", 0.9 * profile.memory_bytes)
    ranks = pc.ranks
    if as_json:
        doc = {"model": loaded.spec.model_id, "device": profile.name, "passes": [str(s) for s in specs],
               "formulas": {k: str(v) for k, v in formulas.items()},
               "lengths": [e.to_dict() | {"chunked_prefill": c} for e, c in zip(evs, chunked)],
               "attention_working_set": {a: dict(zip(map(str, ns), v)) for a, v in ws.items()},
               "unpriced": sorted({op for e in pc.entries.values() for op in e.unpriced})}
        if ranks > 1:
            doc["context_parallel"] = _collectives_doc(pc, profile)
        print(json.dumps(doc, indent=2))
        return
    if ranks > 1:
        out.print(f"[bold]{loaded.spec.model_id}[/bold] ({label}) on {profile.name}, per rank of {ranks}: formulas "
                  f"in L (the whole prompt's length; cache slots per rank = {cache_slots(L, ranks)})")
    else:
        out.print(f"[bold]{loaded.spec.model_id}[/bold] ({label}) on {profile.name}: formulas in L "
                  "(sequence length; cache capacity = L)")
    for name, expr in formulas.items():
        out.print(f"  {name.replace('_', ' ')} = {pretty(expr)}")
    last = ("communication", "decode communication") if ranks > 1 else \
        (f"chunked prefill ({format_length(CHUNKED_PREFILL)})",)
    rows = table(f"cost at each length on {profile.name}" + (f", per rank of {ranks}" if ranks > 1 else ""),
                 ("length", "prefill FLOPs", "bytes moved", "weights", "KV cache", "activations", "peak memory",
                  "prefill time", "decode tok/s", *last), justify="right")
    for e, c in zip(evs, chunked):
        cells = (_comm_cell(e.comm_time, e.comm_share), _comm_cell(e.decode_comm_time, e.decode_comm_share)) \
            if ranks > 1 else \
            (f"{human_bytes(c['memory'])}, {optional(c['time'], human_seconds)}",)
        rows.add_row(format_length(e.length), human_count(e.prefill_flops), human_bytes(e.prefill_bytes),
                     human_bytes(e.weights), human_bytes(e.kv_cache), human_bytes(e.activations),
                     human_bytes(e.memory), optional(e.prefill_time, human_seconds),
                     optional(e.decode_tokens_per_s, lambda x: f"{x:.1f}"), *cells)
    out.print(rows)
    if ranks > 1:
        _print_collectives(pc, profile, evs)
    wst = table(f"attention working set of one layer ({profile.kind})", ("algo",))
    for n in ns:
        wst.add_column(format_length(n), justify="right")
    for algo, vals in ws.items():
        wst.add_row(algo, *[optional(v, human_bytes) for v in vals])
    out.print(wst)
    unpriced = sorted({op for e in pc.entries.values() for op in e.unpriced})
    if unpriced:
        out.print(f"priced as elementwise (no cost rule): {', '.join(unpriced)}")


def _comm_cell(seconds: Optional[float], share: Optional[float]) -> str:
    """``time (its share of the entry's time)`` of one rank's collectives."""
    return "-" if seconds is None else f"{human_seconds(seconds)} ({share:.0%})"


def _collectives_doc(pc, profile) -> dict:
    """The JSON of a context-parallel program's collectives per rank: the link and, per entry, each kind."""
    from lcc.cost.comm import link_of

    name, bandwidth, latency = link_of(profile)
    entries = {}
    for entry in (pc.prefill.entry, "decode"):
        if entry in pc.program.entries:
            entries[entry] = [{"name": c.name, "bytes_in": str(c.bytes_in), "calls": int(c.calls),
                               "messages": int(c.steps)} for c in pc.collectives(entry)]
    return {"ranks": pc.ranks, "balance": pc.program.meta["context_parallel"].get("balance"),
            "link": {"name": name, "bandwidth": bandwidth, "latency": latency}, "collectives": entries}


def _print_collectives(pc, profile, evs) -> None:
    from lcc.cost.symbols import pretty
    from lcc.lengths import format_length

    doc = _collectives_doc(pc, profile)
    link = doc["link"]
    received = ", ".join(f"{human_bytes(e.comm_bytes)} at {format_length(e.length)}" for e in evs)
    out.print(f"communication per rank (ring all-gathers, in the times above) over {link['name']}: "
              f"{link['bandwidth'] / 1e9:.4g} GB/s per direction, {link['latency'] * 1e6:.3g} us per message; "
              f"prefill receives {received}")
    for entry in doc["collectives"]:
        for c in pc.collectives(entry):
            steps = int(c.steps)
            out.print(f"  {entry}: {int(c.calls)} x {c.name}, each {pretty(c.bytes_in)} bytes in, "
                      f"{steps} message{'s' if steps > 1 else ''}")


def plan(model: str = typer.Argument("smollm2-135m", help="preset, HF directory (config.json is enough), hub id "
                                    "or .gguf file"),
         target_len: str = typer.Option("128k", "--target-len", help="context length to plan for, e.g. 128k, or "
                                        "auto: the longest length up to --max-len that fits --memory at --quality"),
         max_len: str = typer.Option("1m", "--max-len", help="with --target-len auto: the longest length tried"),
         profile_name: Optional[str] = typer.Option(None, "--profile", help="hardware profile: cpu, gpu, h100, "
                                                    "h200, a100-80gb, l40s, rtx4090 (default: the target's)"),
         target: Optional[str] = typer.Option(None, "--target", help="cpu (default) or cuda: picks the default "
                                              "--profile (cpu; or the local GPU, else h100)"),
         device: Optional[str] = typer.Option(None, "--device", hidden=True, help="old name of --profile"),
         memory: Optional[str] = typer.Option(None, "--memory", help="memory budget, e.g. 24GB or 16GiB "
                                              "(default 90% of the device's)"),
         quality: str = typer.Option("balanced", "--quality", help="exact, balanced, retrieval or any (README: "
                                     "Quality levels)"),
         plot: Optional[str] = typer.Option(None, "--plot", help="write the candidates' cost curves to this PNG"),
         dtype: Optional[str] = typer.Option(None, "--dtype", help="weights, compute and cache dtype priced: fp32 "
                                             "(default), fp16 or bf16"),
         devices: Optional[int] = typer.Option(None, "--devices", min=1, help="devices of the profile's kind "
                                               "available: past one, context parallelism is proposed when one "
                                               "device cannot hold the target length"),
         as_json: bool = typer.Option(False, "--json", help='print {"chosen": {...}, "candidates": [...], '
                                      '"context_parallel": {...}}')):
    """Rank candidate pass lists by predicted memory, time and quality risk; pick one (exit 1 if none fits).

    When one device cannot hold the target length, say how many devices context parallelism needs and, with
    --devices, propose it (per-rank memory and time with the communication share)."""
    from lcc.cost.planner import longest_plan, plan as make_plan
    from lcc.dtypes import parse_dtype
    from lcc.lengths import format_length, parse_length

    auto = target_len.strip().lower() == "auto"
    n = parse_length(max_len if auto else target_len)
    dtype = parse_dtype(dtype) or "float32"
    budget = parse_memory(memory) if memory is not None else None
    check_quality(quality)
    _check_png(plot)
    profile = _profile(_profile_name(profile_name, target, device))
    loaded, program = _program(model, dtype)
    with status("pricing candidates"):
        result = longest_plan(program, n, profile, budget, quality) if auto else \
            make_plan(program, n, profile, budget, quality)
    n = result.target_len
    cp = _context_parallel(result, program, profile, devices, quality) \
        if result.chosen is None or (devices or 1) > 1 else None
    if plot:
        from lcc.cost.model import program_cost
        from lcc.cost.plot import plot_cost
        from lcc.passes import apply_passes

        curves = {}
        for c in result.candidates:
            if c.fits and c.error is None:
                pc = program_cost(apply_passes(program, c.passes), profile.kind)
                curves[" + ".join(c.passes) or "no passes"] = [pc.evaluate(x, profile) for x in _curve_lengths(n)]
        plot_cost(curves, plot, f"{loaded.spec.model_id}: plan candidates on {profile.name}", result.memory_budget)
    if as_json:
        print(json.dumps(result.to_dict() | {"context_parallel": cp}, indent=2))
    else:
        rows = table(f"{loaded.spec.model_id} at {format_length(n)} on {profile.name} "
                     f"(budget {human_bytes(result.memory_budget)}, quality {quality})",
                     ("", "passes", "memory", "prefill time", "decode tok/s", "ppl x", "passkey x", "quality from",
                      "risk", "fits"))
        for c in result.candidates:
            mark = "*" if c is result.chosen else ""
            est = c.estimate
            rows.add_row(mark, " + ".join(c.passes) or "(none)", optional(c.memory, human_bytes),
                         optional(c.prefill_time, human_seconds), optional(c.decode_tokens_per_s, lambda x: f"{x:.1f}"),
                         optional(est and est.ppl_ratio, lambda x: f"{x:.2f}"),
                         optional(est and est.retrieval_ratio, lambda x: f"{x:.2f}"),
                         (est.source + (" (extrapolated)" if est.extrapolated else "")) if est else "-",
                         c.risk if c.error is None else f"error: {c.error}", "yes" if c.fits else "no")
        out.print(rows)
        out.print(f"reason: {result.reason}")
        if cp is not None:
            _print_context_parallel(cp, profile)
    if result.chosen is None and not (cp and cp["passes"] and cp["devices"]):  # nothing to run on what is given
        raise typer.Exit(1)


# passes after which the cache is still the plain full one lcc.cost.comm prices per rank
_CP_BASES = ("flash", "attention-chunked", "rope-scaling")


def _context_parallel(result, program, profile, devices: Optional[int], quality: str) -> dict:
    """:func:`lcc.cost.comm.proposal` at the plan's length and budget for the passes to run: the single-device
    candidate of the best quality (the planner's ranking, as if it fitted) whose cache stays plain, then
    ``context-parallel:ranks=R``; its activations per rank are that candidate's at ceil(L / N) tokens."""
    from dataclasses import replace

    from lcc.cost.comm import proposal
    from lcc.cost.planner import rewritten_cost
    from lcc.quality.rank import rank

    spec, n = program.spec, result.target_len
    bases = [replace(c, fits=True) for c in result.candidates if c.error is None
             and all(p.split(":")[0] in _CP_BASES for p in c.passes)]
    best = rank(bases, quality, beyond=n > spec.trained_len).ok
    base = best[0].passes if best else []
    pc = rewritten_cost(program, base, profile.kind)
    cp = proposal(spec, n, profile, result.memory_budget, devices, spec.dtype,
                  activations=lambda r: pc.evaluate(-(-n // r), profile).activations)
    cp["passes"] = [*base, f"context-parallel:ranks={cp['ranks']}"] if cp["ranks"] and cp["ranks"] > 1 else None
    cp["fallback"] = None if best else _no_base(quality, n, spec.trained_len)
    return cp


def _no_base(quality: str, n: int, trained: int) -> str:
    """What :func:`_context_parallel` priced when no single-device candidate it can extend meets ``quality``."""
    from lcc.lengths import format_length

    beyond = f" (out of range past its trained length, {format_length(trained)})" if n > trained else ""
    return (f"no candidate it composes with ({', '.join(_CP_BASES)}) meets --quality {quality} at "
            f"{format_length(n)}; priced and proposed on the model without other passes{beyond}")


def _print_context_parallel(cp: dict, profile) -> None:
    from lcc.lengths import format_length

    rows = table(f"context parallelism at {format_length(cp['length'])} on {profile.name} "
                 f"(budget {human_bytes(cp['budget'])} per device)",
                 ("ranks", "memory/rank", "cache/rank", "gathered K/V", "activations", "weights", "prefill time",
                  "communication", "received/rank", "fits"), justify="right")
    for r in cp["per_rank"]:
        m = r["memory"]
        rows.add_row(str(r["ranks"]), human_bytes(m["total"]), human_bytes(m["cache"]), human_bytes(m["gathered"]),
                     human_bytes(m["activations"]), human_bytes(m["weights"]), human_seconds(r["time_s"]),
                     f"{human_seconds(r['comm_s'])} ({r['comm_share']:.0%})" if r["ranks"] > 1 else "-",
                     human_bytes(r["bytes_in"]), "yes" if r["fits"] else "no")
    out.print(rows)
    if cp.get("fallback"):
        out.print(f"context parallelism: {cp['fallback']}")
    needed = cp["ranks_needed"]
    if needed is None:
        out.print(f"context parallelism: no count of {profile.name} devices holds {format_length(cp['length'])} "
                  "tokens (its replicated weights and one layer's gathered K/V alone exceed the budget)")
    elif cp["passes"] and cp["devices"]:
        out.print(f"context parallelism: {needed} {profile.name} devices hold {format_length(cp['length'])} tokens; "
                  f"proposed: {' + '.join(cp['passes'])} (link: {cp['per_rank'][-1]['link']})")
    elif needed > 1:
        given = f"more than the {cp['devices']} given" if cp["devices"] else "one is given"
        out.print(f"context parallelism: {format_length(cp['length'])} tokens need {needed} {profile.name} devices, "
                  f"{given}: rerun with --devices {needed}")
    else:
        out.print(f"context parallelism: not needed, one {profile.name} device holds {format_length(cp['length'])} "
                  "tokens")


def calibrate(quick: bool = typer.Option(False, "--quick", help="smaller, faster measurements"),
              as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Measure this machine (CPU with its gloo loopback link, and the CUDA GPU if any) and save the profiles for
    --profile cpu / gpu."""
    from lcc.cost.calibrate import calibrate as run
    from lcc.cost.hardware import user_dir

    with status("calibrating"):
        profiles = run(save=True, quick=quick)
    if as_json:
        print(json.dumps([p.to_dict() for p in profiles], indent=2))
        return
    for p in profiles:
        flops = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in p.matmul.items())
        out.print(f"{p.name}: {p.description}; matmul {flops}; vector {p.vector['float32'] / 1e9:.2f} G/s; "
                  f"bandwidth {p.bandwidth / 1e9:.1f} GB/s; memory {human_bytes(p.memory_bytes)}{_link_text(p)} "
                  f"-> {user_dir() / (p.name + '.toml')}")


def _link_text(p) -> str:
    if p.link_bandwidth:
        return f"; link {p.link}: {p.link_bandwidth / 1e9:.2f} GB/s, {p.link_latency * 1e6:.0f} us per message"
    return f"; link {p.measured['link']}" if "link" in p.measured else ""
