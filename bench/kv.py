"""Measure KV-cache rewrites on smollm2-135m on this machine's CPU and write docs/kv.md.

Sections, each run in a fresh subprocess (so its peak RSS is its own) and kept as JSON
beside the page (``docs/kv.json``), so one section can be re-run and the page re-rendered:

- ``bytes``: cache bytes per token of each layout, summed over the tensors ``empty()`` makes;
- ``ppl``: perplexity of the KJV Bible (Debian's bible-kjv) in windows of 4k (and 8k)
  tokens through ``prefill_logits``; under kv-quant that entry gives, at every position,
  the logits token-by-token decoding through the quantized cache would give;
- ``decode``: seconds per decode step with 4k tokens in the cache (the reference CPU path;
  the cache is filled with random K/V, which does not change the work);
- ``sink``: greedy generation through kv-sink-cache far past its window, RSS sampled as it goes.

    python bench/kv.py --out docs/kv.md [--lengths 4k,8k] [--sink-tokens 3000] [--sections bytes,ppl,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m"
CONFIGS = [  # (label, cache dtype of the capture, passes)
    ("fp32 cache (captured)", "float32", []),
    ("fp16 cache", "float16", []),
    ("int8 KIVI", "float32", ["kv-quant:bits=8"]),
    ("int4 KIVI", "float32", ["kv-quant:bits=4"]),
    ("int2 KIVI", "float32", ["kv-quant:bits=2"]),
    ("fp8 e4m3", "float32", ["kv-quant:format=fp8"]),
]
SINK = "kv-sink-cache:sinks=4,window=508"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def program_for(loaded, capacity, cache_dtype, passes, entries):
    from lcc.capture import capture
    from lcc.passes import apply_passes, canonicalize

    return apply_passes(canonicalize(capture(loaded, capacity, entries=entries, cache_dtype=cache_dtype)), passes)


def section_bytes(args) -> dict:
    from lcc.capture.program import CacheLayout
    from lcc.models import load_model
    from lcc.ops.kv_cache import KVQuantFormat
    from lcc.passes import parse_pass
    from lcc.passes.kv_cache import quantized_layout, sink_layout

    spec = load_model(MODEL).spec
    rows = []
    for capacity in (4096, 8192):
        for label, dtype, passes in CONFIGS:
            plain = CacheLayout(1, capacity, spec.layers, spec.kv_heads, spec.head_dim, dtype)
            layout, ideal = plain, None
            if passes:
                kw = parse_pass(passes[0]).kwargs
                fmt = KVQuantFormat(kw["format"], 8 if kw["format"] == "fp8" else kw["bits"], kw["group"], kw["keys"],
                                    kw["residual"])
                layout = quantized_layout(plain, fmt)
                per_head = fmt.bits / 8 * spec.head_dim * 2 + 2 * (2 if fmt.kind == "int" else 1) * 2 * spec.head_dim / \
                    fmt.group
                ring = 2 * fmt.residual * spec.head_dim * 2 / capacity
                ideal = spec.layers * spec.kv_heads * (per_head + ring)
            measured = sum(t.numel() * t.element_size() for t in layout.empty()) / capacity
            rows.append(dict(label=label, capacity=capacity, bytes_per_token=measured, ideal=ideal,
                             total_mib=measured * capacity / 2**20))
        sink = sink_layout(CacheLayout(1, capacity, spec.layers, spec.kv_heads, spec.head_dim), 4, 508)
        rows.append(dict(label=f"{SINK} (fp32)", capacity=capacity, bytes_per_token=sink.bytes() / capacity,
                         ideal=None, total_mib=sink.bytes() / 2**20))
    return dict(rows=rows)


def section_ppl(args) -> dict:
    from lcc.eval.ppl import perplexity
    from lcc.eval.text import kjv_text
    from lcc.lengths import parse_length
    from lcc.models import load_model

    loaded = load_model(MODEL)
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    text = kjv_text()[: 60 * max(lengths)]  # ~4 characters a token: plenty for one window
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = []
    for length in lengths:
        for label, dtype, passes in CONFIGS:
            t0 = time.perf_counter()
            program = program_for(loaded, length, dtype, passes, ("prefill_logits",))
            ppl, n = perplexity(program, ids, length, 1)
            rows.append(dict(label=label, length=length, ppl=ppl, tokens=n, seconds=time.perf_counter() - t0))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return dict(rows=rows, text="KJV Bible (Debian bible-kjv), first window of each length", windows=1)


def _fill(cache_layout, n, seed=0):
    """A cache of this layout holding n random tokens (decode timing does not depend on the values)."""
    import torch

    from lcc.ops.kv_cache import KVQuantFormat, kv_quant_write

    gen = torch.Generator().manual_seed(seed)
    tensors = cache_layout.empty()
    shape = (cache_layout.batch, cache_layout.kv_heads, n, cache_layout.head_dim)
    if not cache_layout.kind.startswith("quantized:"):
        for t in tensors:
            t[:, :, :n] = torch.randn(shape, generator=gen).to(t.dtype)
        return tensors
    fmt = KVQuantFormat.parse(cache_layout.kind.removeprefix("quantized:"))
    per = len(tensors) // (2 * cache_layout.layers)
    out = []
    for i in range(2 * cache_layout.layers):
        which = "kv"[i % 2]
        out += kv_quant_write(tensors[i * per:(i + 1) * per], torch.randn(shape, generator=gen), None, str(fmt), which)
    return out


def section_decode(args) -> dict:
    import torch

    from lcc.models import load_model

    loaded = load_model(MODEL)
    context, steps = args.decode_context, args.decode_steps
    rows = []
    for label, dtype, passes in CONFIGS + [("kv-sink-cache 4+508 (fp32)", "float32", [SINK])]:
        program = program_for(loaded, context + 64, dtype, passes, ("decode",))
        cache = _fill(program.cache, context if "sink" not in label else 512)
        decode, times = program.entries["decode"], []
        with torch.inference_mode():
            for step in range(steps + 1):
                t0 = time.perf_counter()
                _, *cache = decode(torch.tensor([[42]]), torch.tensor(context + step), *cache)
                times.append(time.perf_counter() - t0)
        times = sorted(times[1:])  # the first call warms up
        rows.append(dict(label=label, context=context, median_s=times[len(times) // 2], min_s=times[0],
                         cache_mib=program.cache.bytes() / 2**20))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return dict(rows=rows, steps=steps)


def section_sink(args) -> dict:
    import torch

    from lcc.eval.text import kjv_text
    from lcc.models import load_model
    from lcc.passes import parse_pass

    loaded = load_model(MODEL)
    prompt = torch.tensor([loaded.tokenizer(kjv_text()[:2000], add_special_tokens=False)["input_ids"][:256]])
    n_prompt, total = prompt.shape[1], args.sink_tokens
    program = program_for(loaded, 512, "float32", [SINK], ("prefill", "decode"))
    kw = parse_pass(SINK).kwargs
    samples, new = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits, *cache = program.entries["prefill"](prompt, *program.cache.empty())
        token = logits[:, -1].argmax(-1)
        for step in range(total):
            new.append(int(token[0]))
            logits, *cache = program.entries["decode"](token.view(1, 1), torch.tensor(n_prompt + step), *cache)
            token = logits[:, -1].argmax(-1)
            if (step + 1) % max(1, total // 10) == 0:
                samples.append(dict(tokens=n_prompt + step + 1, rss_mib=rss_mib(),
                                    cache_mib=sum(t.numel() * t.element_size() for t in cache) / 2**20,
                                    seconds=time.perf_counter() - t0))
                print(json.dumps(samples[-1]), file=sys.stderr)
    tail = loaded.tokenizer.decode(new[-60:], skip_special_tokens=True)
    return dict(prompt_tokens=n_prompt, generated=total, sinks=kw["sinks"], window=kw["window"], samples=samples,
                peak_rss_mib=peak_rss_mib(), seconds=time.perf_counter() - t0, tail=tail,
                distinct_last_200=len(set(new[-200:])))


SECTIONS = {"bytes": section_bytes, "ppl": section_ppl, "decode": section_decode, "sink": section_sink}


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
                load=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M"))


def run_section(name: str, args) -> dict:
    """One section in a fresh process; its JSON on stdout, progress on stderr."""
    cmd = [sys.executable, __file__, "--run-section", name, "--lengths", args.lengths, "--threads", str(args.threads),
           "--decode-context", str(args.decode_context), "--decode-steps", str(args.decode_steps),
           "--sink-tokens", str(args.sink_tokens)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out.update(machine=_child_machine(out), wall_s=time.perf_counter() - t0)
    return out


def _child_machine(out):
    return out.pop("_machine", None)


# --- the page ------------------------------------------------------------------------------------------------------


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_line(m) -> str:
    if not m:
        return ""
    return (f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['threads']} thread(s), "
            f"load average {m['load']:.1f} when it started, {m['date']}")


def _bytes_md(res) -> str:
    rows4 = {r["label"]: r for r in res["rows"] if r["capacity"] == 4096}
    rows8 = {r["label"]: r for r in res["rows"] if r["capacity"] == 8192}
    fp16 = rows4["fp16 cache"]["bytes_per_token"]
    body = []
    for label, r in rows4.items():
        ideal = r["ideal"]
        body.append([label, f"{r['bytes_per_token']:,.0f}", "-" if ideal is None else f"{ideal:,.0f}",
                     "-" if ideal is None else f"{r['bytes_per_token'] / ideal - 1:+.1%}",
                     f"{r['bytes_per_token'] / fp16:.3f}", f"{r['total_mib']:.1f}",
                     f"{rows8[label]['bytes_per_token']:,.0f}", f"{rows8[label]['total_mib']:.1f}"])
    return _table(["layout", "B/token @4k", "ideal", "vs ideal", "vs fp16", "MiB @4k", "B/token @8k", "MiB @8k"],
                  body)


def _ppl_md(res) -> str:
    lengths = sorted({r["length"] for r in res["rows"]})
    by = {(r["label"], r["length"]): r for r in res["rows"]}
    labels = list(dict.fromkeys(r["label"] for r in res["rows"]))
    body = []
    for label in labels:
        row = [label]
        for n in lengths:
            r = by.get((label, n))
            row += ["-", "-"] if r is None else [f"{r['ppl']:.3f}", f"{r['seconds']:.0f}"]
        body.append(row)
    name = lambda n: f"{n // 1024}k" if n % 1024 == 0 else str(n)  # noqa: E731
    header = ["cache"] + [h for n in lengths for h in (f"ppl @{name(n)}", f"s @{name(n)}")]
    return _table(header, body)


def _decode_md(res) -> str:
    return _table(["cache", "context", "s/token (median)", "s/token (min)", "cache MiB"],
                  [[r["label"], r["context"], f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['cache_mib']:.1f}"]
                   for r in res["rows"]])


def _sink_md(res) -> str:
    rows = [[s["tokens"], f"{s['rss_mib']:.0f}", f"{s['cache_mib']:.1f}", f"{s['seconds']:.0f}"]
            for s in res["samples"]]
    return _table(["tokens so far", "RSS MiB", "cache MiB", "seconds"], rows)


def render(results: dict) -> str:
    parts = [PAGE_HEAD]
    if "bytes" in results:
        parts += ["## Cache bytes per token\n", BYTES_TEXT, _bytes_md(results["bytes"]), ""]
    if "ppl" in results:
        r = results["ppl"]
        parts += ["## Perplexity on long real text\n", PPL_TEXT.format(machine=_machine_line(r.get("machine"))),
                  _ppl_md(r), ""]
    if "decode" in results:
        r = results["decode"]
        parts += ["## Decode time per token (CPU)\n",
                  DECODE_TEXT.format(machine=_machine_line(r.get("machine")), steps=r["steps"]), _decode_md(r), ""]
    if "sink" in results:
        r = results["sink"]
        per_token = r["seconds"] / max(1, r["generated"])
        parts += ["## kv-sink-cache: long generation in constant memory\n",
                  SINK_TEXT.format(**{**r, "machine": _machine_line(r.get("machine")), "per_token": per_token}), _sink_md(r), "",
                  f"Last 60 generated tokens: `{r['tail'].strip()[:300]!s}` "
                  f"({r['distinct_last_200']} distinct tokens among the last 200).", ""]
    parts.append(PAGE_TAIL)
    return "\n".join(parts)


PAGE_HEAD = """# KV-cache memory: quantized cache (kv-quant) and sink + window cache (kv-sink-cache)

Measured on smollm2-135m (30 layers, 3 KV heads of dim 64, trained to 8192 tokens) on this
project's CPU machine; there is no GPU here, so nothing on this page is a GPU number.
Regenerate the page (and `docs/kv.json`, the raw results) with:

    python bench/kv.py --out docs/kv.md

(`--sections ppl --lengths 8k` re-runs one section and keeps the others; `--help` lists the knobs.)

## What the passes do

- `kv-quant:bits=8|4|2,group=G,keys=channel|token,residual=R` and `kv-quant:format=fp8` store the
  cache as codes plus fp16 scales (KIVI, Liu et al. 2024): keys quantized per channel over groups
  of G tokens, values per token over groups of G channels, the most recent R..R+G-1 tokens kept in
  fp16 in a ring buffer; fp8 is e4m3 with an fp16 scale per group (symmetric).  Defaults: bits=4,
  group=32, keys=channel, residual=128.  Decode attention is `lcc.attention_kvq`, which reads the
  codes: the CPU reference dequantizes 1024 tokens at a time, the Triton kernel
  (`lcc/backends/triton/kv_decode.py`) in registers; no full-precision copy of the cache is made.
  The generation `prefill` keeps full-precision attention over the prompt (as KIVI does) and writes
  the quantized cache.  The evaluation entries (`prefill_full` for `lcc diff`, `prefill_logits` for
  perplexity) use `lcc.attention_kvq_sim`, so the logits at every position are those token-by-token
  decoding through the quantized cache gives (checked against real decoding in the tests).
- `kv-sink-cache:sinks=S,window=W` (StreamingLLM, Xiao et al. 2024, sec. 3.2): the first S tokens
  plus a ring of the last W; keys are cached before RoPE and rotated after the read by their place
  in the cache (sinks 0..S-1, then the window oldest first), the query at min(position, S+W-1), so
  positions stay below S+W however long the text.  Decode attention is the ordinary `lcc.attention`
  over the S+W slots.  A prompt longer than S+W is prefilled with the `sliding:window=W,sinks=S`
  mask at its own positions (the sinks are then seen at their text distance) and leaves the same
  cache as decoding it would.
"""

BYTES_TEXT = """Summed over the tensors each layout's `empty()` allocates, divided by the capacity (4096 or
8192 tokens).  "ideal" is bits/8 bytes per element plus the fp16 scales (and zeros) per group
plus R=128 fp16 tokens of residual; the layout also holds G more ring slots (the group that is
filling) and quantized slots for the last tokens, which is the small excess.  The quantized layouts
are within 10% of ideal (4% here), checked in `tests/passes/test_kv_cache.py` on the same tensors.
"""

PPL_TEXT = """One window of each length from the start of the KJV Bible (Debian's `bible-kjv`), every
position but the last predicting the next (4095 / 8191 predictions), through the program's
`prefill_logits`.  The fp16 row captures with an fp16 cache (attention reads the fp16-rounded
K/V); the kv-quant rows give each position the logits decoding through the quantized cache
would give.  "s" is the wall time of the row (capture + one window).  {machine}.
"""

DECODE_TEXT = """Seconds per `decode` call of the whole model with the cache holding the context, median of
{steps} steps after one warm-up, eager FX execution on the CPU ({machine}).  The kv-quant rows
run the reference `lcc.attention_kvq`, which dequantizes the cache a block at a time on every
step, and the write op, which copies the (smaller) cache functionally as `index_copy` does; on
this CPU they are therefore not faster than the fp32 cache, and the numbers say nothing about
the Triton kernel, which was only run in Triton's interpreter (correctness) and compiled ahead
of time for sm_80 and sm_90.  The machine is shared with other jobs: treat these as noisy.
"""

SINK_TEXT = """`{generated}` tokens generated greedily after a {prompt_tokens}-token KJV prompt through
`kv-sink-cache:sinks={sinks},window={window}` (a 512-slot fp32 cache), calling `decode` directly:
the last position reached is {prompt_tokens} + {generated}, far past the window.  The cache is the
same size throughout and the process RSS stays flat; peak RSS of the whole run (model load,
capture, generation) {peak_rss_mib:.0f} MiB; {per_token:.2f} s/token ({machine}).
"""

PAGE_TAIL = """## What was not measured

- No GPU: the Triton kernel's speed, and GPU memory, are not measured.  Its correctness is tested
  against the reference in Triton's interpreter (`tests/backends/triton/test_kv_decode.py`) and it
  compiles for sm_80 (fp8 decoded with integer ops there) and sm_90.
- Perplexity uses one window per length; it compares the caches on the same tokens, it is not a
  benchmark score.  Passkey retrieval with the quantized cache was not run.
- The CPU decode path of kv-quant is a reference implementation (block-wise dequantization in
  PyTorch); its time per token is not representative of a fused kernel.
- `lcc.runtime.generate_ids` still refuses prompt + new tokens beyond the captured capacity, even
  for the sink cache; the long run above calls `decode` itself.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/kv.md")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="which to (re)run; the others are read back "
                                                                    "from the JSON beside --out")
    ap.add_argument("--lengths", default="4k,8k")
    ap.add_argument("--decode-context", type=int, default=4096)
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--sink-tokens", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    ap.add_argument("--run-section", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    torch.set_num_threads(args.threads)
    if args.run_section:
        out = SECTIONS[args.run_section](args)
        out["_machine"] = machine()
        print(json.dumps(out))
        return 0
    store = Path(args.out).with_suffix(".json")
    results = json.loads(store.read_text()) if store.is_file() else {}
    for name in filter(None, args.sections.split(",")):
        print(f"[kv] {name} ...", file=sys.stderr)
        new = run_section(name, args)
        if name == "ppl" and name in results:  # keep lengths measured by earlier runs
            done = {(r["label"], r["length"]) for r in new["rows"]}
            new["rows"] = [r for r in results[name]["rows"] if (r["label"], r["length"]) not in done] + new["rows"]
        results[name] = new
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out).write_text(render(results))
    print(f"wrote {args.out} (raw results: {store})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
