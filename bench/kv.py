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

The ``ppl`` and ``passkey`` rows of the pass configs are also stored as quality records in the
user's records file of the weights (``$LCC_CACHE/quality``, as ``lcc quality`` stores them).

    python bench/kv.py --out docs/kv.md [--lengths 4k,8k] [--sink-tokens 3000] [--sections bytes,ppl,...]
"""

from __future__ import annotations

import argparse
import gc
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


def configs(args):
    """CONFIGS, or those named by ``--only`` (comma-separated labels)."""
    only = [x.strip() for x in (args.only or "").split(",") if x.strip()]
    return [c for c in CONFIGS if not only or c[0] in only]


def program_for(loaded, capacity, cache_dtype, passes, entries):
    from lcc.capture import capture
    from lcc.passes import apply_passes, canonicalize

    return apply_passes(canonicalize(capture(loaded, capacity, entries=entries, cache_dtype=cache_dtype)), passes)


def save_records(loaded, rows: list[dict], figure: str) -> None:
    """The pass configs' rows as quality records in the user's records file (``lcc quality``'s code path):
    ``figure`` is "ppl" or "passkey"; passes spelled as the shipped records spell them (+ flash, exact)."""
    import datetime

    import lcc
    from lcc.quality.measure import device_name, save_rows
    from lcc.quality.records import Row

    passes = {label: p for label, dtype, p in CONFIGS if dtype == "float32"}  # fp16 cache: no pass spells it
    today, where = datetime.date.today().isoformat(), device_name("cpu")
    out = [Row(tuple(passes[r["label"]] + ["flash"]), r["length"], r.get("ppl") if figure == "ppl" else None,
               "first-window", r.get("accuracy") if figure == "passkey" else None,
               r.get("trials", 0) if figure == "passkey" else 0, where, "fp32", today, lcc.__version__,
               f"bench/kv.py ({figure})") for r in rows if r["label"] in passes]
    if out:
        print(f"quality records: {save_rows(loaded, out)}", file=sys.stderr)


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
                ring = 2 * fmt.residual * spec.head_dim * 2 / capacity  # K and V, fp16
                ideal = spec.layers * spec.kv_heads * (fmt.bytes_per_token(spec.head_dim) + ring)
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
        for label, dtype, passes in configs(args):
            t0 = time.perf_counter()
            program = program_for(loaded, length, dtype, passes, ("prefill_logits",))
            ppl, n = perplexity(program, ids, length, 1)
            rows.append(dict(label=label, length=length, ppl=ppl, tokens=n, seconds=time.perf_counter() - t0))
            print(json.dumps(rows[-1]), file=sys.stderr)
    save_records(loaded, rows, "ppl")
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


def _stream_nll(program, ids, n_prompt, on_step):
    """Feed ``ids`` through the sink cache token by token (teacher forcing): summed NLL past the prompt."""
    import torch

    total = 0.0
    with torch.inference_mode():
        logits, *cache = program.entries["prefill"](torch.tensor([ids[:n_prompt]]), *program.cache.empty())
        for t in range(n_prompt, len(ids)):
            total -= float(torch.log_softmax(logits[0, -1].double(), -1)[ids[t]])
            logits, *cache = program.entries["decode"](torch.tensor([[ids[t]]]), torch.tensor(t), *cache)
            on_step(t, cache)
    return total, len(ids) - n_prompt


def section_sink(args) -> dict:
    """Perplexity of a KJV stream fed token by token through the sink cache (StreamingLLM's measurement),
    against the plain program on the same tokens; then greedy generation; RSS sampled throughout."""
    import math

    import torch

    from lcc.eval.text import kjv_text
    from lcc.models import load_model
    from lcc.passes import parse_pass

    loaded = load_model(MODEL)
    n_prompt, stream, total = 256, args.sink_stream, args.sink_tokens
    ids = loaded.tokenizer(kjv_text()[:8 * (n_prompt + stream)], add_special_tokens=False)["input_ids"]
    ids = ids[:n_prompt + stream]
    program = program_for(loaded, 512, "float32", [SINK], ("prefill", "decode"))
    if args.sink_backend == "onnx":  # the same program lowered (lcc compile --backend onnx), run by onnxruntime
        import tempfile

        from lcc.backends.onnx import OnnxProgram, lower

        art = Path(tempfile.mkdtemp(prefix="lcc-kv-sink-")) / "artifact"
        lower(program, art, genai=False)
        program = OnnxProgram(art, providers=["CPUExecutionProvider"], threads=args.threads)
    kw = parse_pass(SINK).kwargs
    samples, new = [], []
    t0 = time.perf_counter()

    def sample(tokens, cache, phase):
        samples.append(dict(phase=phase, tokens=tokens, rss_mib=rss_mib(), seconds=time.perf_counter() - t0,
                            cache_mib=sum(t.numel() * t.element_size() for t in cache) / 2**20))
        print(json.dumps(samples[-1]), file=sys.stderr)

    every = max(1, (stream + total) // 12)
    nll, n = _stream_nll(program, ids, n_prompt,
                         lambda t, cache: (t + 1) % every == 0 and sample(t + 1, cache, "stream"))
    stream_s = time.perf_counter() - t0
    plain = program_for(loaded, len(ids), "float32", [], ("prefill_logits",))
    with torch.inference_mode():
        logits = plain.entries["prefill_logits"](torch.tensor([ids]), *plain.cache.empty())[0][0]
        lp = torch.log_softmax(logits.double(), -1)
    plain_nll = -float(sum(lp[t - 1, ids[t]] for t in range(n_prompt, len(ids))))
    del plain, logits, lp  # the comparison's program and 8k logits: not part of the generation's footprint
    gc.collect()
    with torch.inference_mode():  # greedy generation continuing the stream
        logits, *cache = program.entries["prefill"](torch.tensor([ids[:n_prompt]]), *program.cache.empty())
        token = logits[:, -1].argmax(-1)
        for step in range(total):
            new.append(int(token[0]))
            logits, *cache = program.entries["decode"](token.view(1, 1), torch.tensor(n_prompt + step), *cache)
            token = logits[:, -1].argmax(-1)
            if (step + 1) % every == 0:
                sample(n_prompt + step + 1, cache, "generate")
    tail = loaded.tokenizer.decode(new[-60:], skip_special_tokens=True)
    if args.sink_backend == "onnx":
        import shutil

        shutil.rmtree(art.parent, ignore_errors=True)
    return dict(prompt_tokens=n_prompt, stream=stream, generated=total, sinks=kw["sinks"], window=kw["window"],
                backend=args.sink_backend,
                samples=samples, stream_ppl=math.exp(nll / n), plain_ppl=math.exp(plain_nll / n), stream_tokens=n,
                stream_s=stream_s, peak_rss_mib=peak_rss_mib(), seconds=time.perf_counter() - t0, tail=tail,
                distinct_last_200=len(set(new[-200:])))


def section_passkey(args) -> dict:
    """Passkey retrieval at ``--passkey-len`` through each cache (greedy, ``lcc.eval.eval_passkey``)."""
    from lcc.eval import DEPTHS, eval_passkey
    from lcc.models import load_model

    loaded = load_model(MODEL)
    rows = []
    for label, dtype, passes in configs(args):
        if dtype != "float32":
            continue  # the fp16 cache is a capture option, not a pass: eval runs the fp32 capture
        t0 = time.perf_counter()
        r = eval_passkey(loaded, passes, [args.passkey_len], trials=args.passkey_trials)[0]
        rows.append(dict(label=label, length=args.passkey_len, accuracy=r.metrics["accuracy"],
                         trials=args.passkey_trials * len(DEPTHS), seconds=time.perf_counter() - t0))
        print(json.dumps(rows[-1]), file=sys.stderr)
    save_records(loaded, rows, "passkey")
    return dict(rows=rows)


def _passkey_md(res) -> str:
    return _table(["cache", "length", "accuracy", "trials", "s"],
                  [[r["label"], r["length"], f"{r['accuracy']:.2f}", r["trials"], f"{r['seconds']:.0f}"]
                   for r in res["rows"]])


def _plain_segments_nll(loaded, ids, segment):
    """Anchor: the same segments with no memory at all (each segment alone, through prefill_logits); every
    token but the first is predicted, the first of a segment by the last logits of the one before."""
    import math

    import torch

    program = program_for(loaded, segment, "float32", [], ("prefill_logits",))
    x = torch.tensor([ids])
    with torch.inference_mode():
        logits = torch.cat([program.entries["prefill_logits"](x[:, a:a + segment], *program.cache.empty())[0][0]
                            for a in range(0, len(ids), segment)])
    lp = torch.log_softmax(logits[:-1].double(), -1)
    return math.exp(-float(lp.gather(-1, x[0, 1:, None]).sum()) / (len(ids) - 1)), len(ids) - 1


def section_memory(args) -> dict:
    """memory-tokens: fit the memory (as ``lcc train-memory``) on KJV text far from the evaluation window,
    then perplexity of one window past the model's trained length with untrained and trained memory."""
    import tempfile

    from lcc.eval.ppl import perplexity
    from lcc.eval.text import kjv_text
    from lcc.memory import train_memory
    from lcc.models import load_model
    from lcc.passes.memory_tokens import save_memory

    loaded = load_model(MODEL)
    m, s, length = args.mem_count, args.mem_segment, args.mem_length
    text = kjv_text()
    eval_ids = loaded.tokenizer(text[:8 * length], add_special_tokens=False)["input_ids"]
    train_ids = loaded.tokenizer(text[2_000_000:2_000_000 + 8 * s * max(8, args.mem_steps)],
                                 add_special_tokens=False)["input_ids"]
    t0 = time.perf_counter()
    memory, losses = train_memory(loaded, m, s, args.mem_steps, train_ids, lr=1e-2, seed=0, unroll=2,
                                  progress=lambda i, loss: print(json.dumps(dict(step=i, loss=loss)), file=sys.stderr))
    train_s = time.perf_counter() - t0
    path = Path(tempfile.mkdtemp()) / "memory.safetensors"
    save_memory(path, memory, {"count": m, "segment": s})
    rows = []
    for label, extra in (("untrained (mean embedding + noise)", ""), ("trained", f",memory={path}")):
        t0 = time.perf_counter()
        program = program_for(loaded, 2 * m + s, "float32", [f"memory-tokens:count={m},segment={s}{extra}"],
                              ("prefill_logits",))
        ppl, n = perplexity(program, eval_ids, length, 1)
        rows.append(dict(label=label, ppl=ppl, tokens=n, seconds=time.perf_counter() - t0))
        print(json.dumps(rows[-1]), file=sys.stderr)
    t0 = time.perf_counter()
    ppl, n = _plain_segments_nll(loaded, eval_ids[:length], s)
    rows.append(dict(label="segments without memory (anchor)", ppl=ppl, tokens=n, seconds=time.perf_counter() - t0))
    return dict(rows=rows, count=m, segment=s, length=length, steps=args.mem_steps, losses=losses, train_s=train_s)


def _memory_md(res) -> str:
    return _table(["memory", f"ppl over {res['length']} tokens", "predictions", "s"],
                  [[r["label"], f"{r['ppl']:.3f}", r["tokens"], f"{r['seconds']:.0f}"] for r in res["rows"]])


GPU_FORMATS = [("int8 KIVI", "int8:group=32,keys=channel,residual=128"),
               ("int4 KIVI", "int4:group=32,keys=channel,residual=128"),
               ("int2 KIVI", "int2:group=32,keys=channel,residual=128"),
               ("fp8 e4m3", "fp8:group=32,keys=channel,residual=128")]


def _quant_parts(fmt, x, which):
    import torch

    from lcc.ops.kv_cache import KVQuantFormat, kv_quant_write

    f = KVQuantFormat.parse(fmt)
    b, h, n, d = x.shape
    parts = [torch.zeros(s, dtype=getattr(torch, dt), device=x.device) for _, s, dt in f.part_specs(which, b, h, n, d)]
    return kv_quant_write(parts, x, None, fmt, which)


def section_gpu(args) -> dict:
    """One layer's decode attention, smollm2 shapes (9 query / 3 KV heads, dim 64), on CUDA: the quantized
    cache kernel (``kvq_decode``) against the unquantized split-K kernel (``flash_decode``) over an fp16 cache."""
    import torch

    if not torch.cuda.is_available():
        print("[kv] gpu: no CUDA device here, skipped", file=sys.stderr)
        return dict(skipped="no CUDA device")
    from triton.testing import do_bench

    from lcc.backends.triton.decode import flash_decode
    from lcc.backends.triton.kv_decode import kvq_decode
    from lcc.ops.kv_cache import attention_kvq_reference

    dev, hq, hkv, d = torch.device("cuda"), 9, 3, 64
    rows = []
    for batch in (1, 16):
        for ctx in (4096, 32768, 131072):
            gen = torch.Generator(device=dev).manual_seed(0)
            q = torch.randn(batch, hq, 1, d, device=dev, generator=gen, dtype=torch.float16)
            k = torch.randn(batch, hkv, ctx, d, device=dev, generator=gen) * 2
            v = torch.randn(batch, hkv, ctx, d, device=dev, generator=gen)
            n = torch.tensor(ctx, device=dev)
            kh, vh = k.half(), v.half()
            base = do_bench(lambda: flash_decode(q, kh, vh, n, 0.125), warmup=25, rep=200)
            rows.append(dict(label="fp16 (flash_decode)", batch=batch, context=ctx, us=base * 1e3,
                             cache_mib=2 * kh.numel() * 2 / 2**20, speedup=1.0, peak_extra_mib=0.0, err=0.0))
            for label, fmt in GPU_FORMATS:
                kp, vp = _quant_parts(fmt, k, "k"), _quant_parts(fmt, v, "v")
                cache_b = sum(t.numel() * t.element_size() for t in kp + vp)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                o = kvq_decode(q, kp, vp, n, 0.125, "causal", fmt)
                torch.cuda.synchronize()
                extra = (torch.cuda.max_memory_allocated() - before) / 2**20
                err = 0.0
                if batch == 1 and ctx == 4096:  # the kernel against the op's reference, on this GPU
                    want = attention_kvq_reference(q.float().cpu(), [t.cpu() for t in kp], [t.cpu() for t in vp],
                                                   n.cpu(), 0.125, "causal", fmt)
                    err = float((o.float().cpu() - want).abs().max())
                ms = do_bench(lambda: kvq_decode(q, kp, vp, n, 0.125, "causal", fmt), warmup=25, rep=200)
                rows.append(dict(label=label, batch=batch, context=ctx, us=ms * 1e3, cache_mib=cache_b / 2**20,
                                 speedup=base / ms, peak_extra_mib=extra, err=err))
                print(json.dumps(rows[-1]), file=sys.stderr)
            del k, v, kh, vh
            torch.cuda.empty_cache()
    import triton

    return dict(rows=rows, device=torch.cuda.get_device_name(), triton=triton.__version__)


def _gpu_md(res) -> str:
    return _table(["cache", "batch", "context", "us / layer", "vs fp16", "cache MiB / layer", "extra MiB at peak",
                   "max err vs reference"],
                  [[r["label"], r["batch"], r["context"], f"{r['us']:.1f}", f"{r['speedup']:.2f}x",
                    f"{r['cache_mib']:.1f}", f"{r['peak_extra_mib']:.2f}", f"{r['err']:.1e}" if r["err"] else "-"]
                   for r in res["rows"]])


SECTIONS = {"bytes": section_bytes, "ppl": section_ppl, "decode": section_decode, "sink": section_sink,
            "passkey": section_passkey, "memory": section_memory, "gpu": section_gpu}


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
           "--sink-tokens", str(args.sink_tokens), "--sink-stream", str(args.sink_stream),
           "--sink-backend", args.sink_backend,
           "--only", args.only, "--passkey-len", str(args.passkey_len), "--passkey-trials", str(args.passkey_trials),
           "--mem-count", str(args.mem_count), "--mem-segment",
           str(args.mem_segment), "--mem-steps", str(args.mem_steps), "--mem-length", str(args.mem_length)]
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
    lengths = sorted({r["length"] for r in res["rows"]} | {4096, 8192})
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
    rows = [[s.get("phase", "generate"), s["tokens"], f"{s['rss_mib']:.0f}", f"{s['cache_mib']:.1f}",
             f"{s['seconds']:.0f}"] for s in res["samples"]]
    return _table(["phase", "position reached", "RSS MiB", "cache MiB", "seconds"], rows)


def _sink_flat(r) -> str:
    """RSS over the generation samples: the constant-memory claim in numbers."""
    gen = [x for x in r["samples"] if x.get("phase", "generate") == "generate"]
    if not gen:
        return "no generation samples were taken"
    lo, hi = min(x["rss_mib"] for x in gen), max(x["rss_mib"] for x in gen)
    return (f"while generating, RSS was {lo:.0f}-{hi:.0f} MiB over {len(gen)} samples from position "
            f"{gen[0]['tokens']} to {gen[-1]['tokens']}")


def _sink_short(r, per_token) -> str:
    if r["generated"] >= 65536:
        return ""
    return (f"\n**Shorter than the issue asks**: this run generated {r['generated']} tokens, not 64k; the script's "
            f"defaults (`--sink-stream 7936 --sink-tokens 65536`) do the full run, about "
            f"{(7936 + 65536) * per_token / 3600:.1f} h at this CPU's speed.")


def render(results: dict) -> str:
    parts = [PAGE_HEAD, "![layouts and memory tokens](kv.png)\n"]
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
    if "sink" in results and "stream_ppl" not in results["sink"]:
        parts += ["## kv-sink-cache: long generation in constant memory\n",
                  "The stored result predates the stream perplexity: re-run `--sections sink`.", ""]
    elif "sink" in results:
        r = results["sink"]
        per_token = r["stream_s"] / max(1, r["stream"])
        parts += ["## kv-sink-cache: long generation in constant memory\n",
                  SINK_TEXT.format(**{**r, "machine": _machine_line(r.get("machine")), "per_token": per_token,
                                     "runs_on": ("the program's ONNX lowering in onnxruntime"
                                                 if r.get("backend") == "onnx" else "the captured program in torch"),
                                     "ratio": r["stream_ppl"] / r["plain_ppl"], "short": _sink_short(r, per_token),
                                     "flat": _sink_flat(r)}),
                  _sink_md(r), "",
                  f"Last 60 generated tokens: `{r['tail'].strip()[:300]!s}` "
                  f"({r['distinct_last_200']} distinct tokens among the last 200).", ""]
    if "passkey" in results:
        machine = _machine_line(results["passkey"].get("machine"))
        parts += ["## Passkey retrieval\n", PASSKEY_TEXT.format(machine=machine), _passkey_md(results["passkey"]), ""]
        if results["passkey"].get("partial"):
            parts += [results["passkey"]["partial"], ""]
    else:
        parts += ["## Passkey retrieval\n", "Not run yet (an 8k prefill per trial is slow on this CPU): "
                  "`python bench/kv.py --sections passkey` fills this section.", ""]
    if "memory" in results:
        r = results["memory"]
        parts += ["## memory-tokens: perplexity past the trained length\n",
                  MEMORY_TEXT.format(**{**r, "machine": _machine_line(r.get("machine")), "first": r["losses"][0],
                                        "last": r["losses"][-1], "train_min": r["train_s"] / 60}),
                  _memory_md(r), ""]
    if "gpu" in results and "rows" in results["gpu"]:
        r = results["gpu"]
        parts += ["## Decode attention on a GPU: quantized Triton kernel vs the unquantized one\n",
                  GPU_TEXT.format(device=r["device"], triton=r["triton"], machine=_machine_line(r.get("machine"))),
                  _gpu_md(r), ""]
    else:
        parts += ["## Decode attention on a GPU: quantized Triton kernel vs the unquantized one\n",
                  "Not run yet: `python bench/kv.py --gpu-decode` on a CUDA machine fills this section.", ""]
    parts.append(PAGE_TAIL)
    return "\n".join(parts)


PAGE_HEAD = """# Decode-time memory: quantized KV cache, sink + window cache, memory tokens

Measured on smollm2-135m (30 layers, 3 KV heads of dim 64, trained to 8192 tokens) on this
project's CPU machine, except the GPU section (an H100).  Regenerate the page (and `docs/kv.json`,
the raw results) with:

    python bench/kv.py --out docs/kv.md

(`--sections ppl --lengths 8k` re-runs one section and keeps the others; `--gpu-decode` runs the
GPU section only and skips on a machine without CUDA; `--help` lists the knobs.  Each section states
the settings it was run with where they differ from the defaults.)

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
- `memory-tokens:count=M,segment=S[,memory=FILE]` (RMT, Bulatov et al. 2022): the text runs in segments
  of S tokens fed as `[read (M), tokens (S), write (M)]`; the final hidden states at the write places
  are the next segment's read memory.  The M embeddings are the only new parameters: fresh ones are the
  mean token embedding plus seeded noise; `lcc train-memory MODEL --count M --segment S --steps N
  --text FILE --out mem.safetensors` fits them with the model frozen, and `memory=mem.safetensors`
  loads them.  The captured graphs take `inputs_embeds` and a runtime loop drives them segment by
  segment (see `lcc/passes/memory_tokens.py`).
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
would give.  "s" is the wall time of the row (capture + one window); rows may come from separate
runs (`--only`), the machine line is the latest run's: {machine}.
"""

DECODE_TEXT = """Seconds per `decode` call of the whole model with the cache holding the context, median of
{steps} steps after one warm-up, eager FX execution on the CPU ({machine}).  The kv-quant rows
run the reference `lcc.attention_kvq`, which dequantizes the cache a block at a time on every
step, and the write op, which copies the (smaller) cache functionally as `index_copy` does; on
this CPU they are therefore not faster than the fp32 cache, and the numbers say nothing about
the Triton kernel (see the GPU section).  Every decode step also copies the whole cache
functionally (`index_copy`), which dominates at 4k.  The machine is shared with other jobs: treat
these as noisy.
"""

SINK_TEXT = """`kv-sink-cache:sinks={sinks},window={window}` (a 512-slot fp32 cache) on smollm2-135m, calling
`decode` directly ({runs_on}).  Stream: the first {prompt_tokens} KJV tokens prefilled, then the next {stream} fed one
token at a time (teacher forcing, as StreamingLLM measures it): perplexity over those {stream_tokens}
predictions **{stream_ppl:.3f}** through the sink cache vs **{plain_ppl:.3f}** for the plain model over the
same tokens with its full context (ratio {ratio:.3f}).  Then {generated} tokens generated greedily after the
{prompt_tokens}-token prompt.  The cache is the same size throughout and RSS stays flat: {flat}; peak RSS of the
whole run (model load, captures, the plain model's prefill for the comparison) {peak_rss_mib:.0f} MiB;
{per_token:.2f} s/token ({machine}).  The RSS step between the phases is the plain model's capture and
prefill for the comparison, run between them; within each phase RSS is flat.{short}
"""

PASSKEY_TEXT = """A 5-digit key hidden at several depths of filler text (`lcc.eval.passkey`), greedy answer through
`prefill` + `decode` of each program; the quantized rows decode through the quantized cache.  {machine}.
"""

MEMORY_TEXT = """`memory-tokens:count={count},segment={segment}` on one window of {length} tokens from the start
of the KJV Bible (smollm2-135m was trained to 8192): {length} tokens run as segments of {segment}, each
carrying {count} memory embeddings (RMT; the write outputs are RMS-scaled to the token embeddings
before they are read, since the model is frozen).  "trained" fitted only the {count} embeddings with
`lcc.memory.train_memory` (what `lcc train-memory` runs): {steps} Adam steps (lr 1e-2) of 2 segments each
on KJV text 2M characters in (far from the evaluation window), model frozen, loss {first:.3f} ->
{last:.3f}, {train_min:.0f} min.  The anchor runs the same segments with no memory (each alone).
{machine}.
"""

GPU_TEXT = """One layer's decode attention (one query token per sequence) with smollm2-135m's shapes (9 query
and 3 KV heads of dim 64, fp16 queries), random K/V, on {device} (Triton {triton}; {machine}).
"fp16" is the unquantized split-K kernel (`lcc/backends/triton/decode.py`) over an fp16 cache; the
others are `lcc/backends/triton/kv_decode.py` reading the quantized cache (KIVI group 32, keys per
channel, 128-token fp16 residual) and dequantizing in registers.  Times are `triton.testing.do_bench`
medians; "extra MiB at peak" is the GPU memory the call allocates beyond the cache (its split
partials: no dequantized copy); "max err" is the kernel against the op's CPU reference (4k, batch 1).
Re-run on a CUDA machine with `python bench/kv.py --gpu-decode` (it skips on a machine without one).
"""

PAGE_TAIL = """## What was not measured

- The GPU section is the attention kernel alone, not whole-model decode on a GPU.
- Perplexity uses one window per length; it compares the caches on the same tokens, it is not a
  benchmark score.  Rows marked "-" were not run on this CPU in the time available (run them with
  `--sections ppl --lengths 8k`, `--sections passkey`).
- The CPU decode path of kv-quant is a reference implementation (block-wise dequantization in
  PyTorch); its time per token is not representative of a fused kernel.
- The long sink run above calls `decode` itself to sample RSS as it goes; `lcc run` with the pass
  (`lcc.runtime.generate_ids`) also generates past the captured capacity through the ring, but its
  prompt must fit the capacity.
"""


def plot(results: dict, path: Path) -> None:
    """docs/kv.png: quality against cache size for each layout; memory-tokens perplexities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1.4, 1]})
    if "bytes" in results and "ppl" in results:
        size = {r["label"]: r["bytes_per_token"] for r in results["bytes"]["rows"] if r["capacity"] == 4096}
        for r in results["ppl"]["rows"]:
            if r["length"] == 4096 and r["label"] in size:
                axes[0].scatter(size[r["label"]] / 1024, r["ppl"])
                axes[0].annotate(r["label"], (size[r["label"]] / 1024, r["ppl"]), fontsize=7)
        axes[0].set(xlabel="cache KiB per token (4k capacity)", ylabel="perplexity @4k (KJV)",
                    title="smollm2-135m: KV-cache layouts")
    if "memory" in results:
        rows = results["memory"]["rows"]
        axes[1].barh([r["label"] for r in rows], [r["ppl"] for r in rows])
        axes[1].set(xscale="log", xlabel=f"perplexity over {results['memory']['length']} tokens",
                    title="memory-tokens")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/kv.md")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="which to (re)run; the others are read back "
                                                                    "from the JSON beside --out")
    ap.add_argument("--lengths", default="4k,8k")
    ap.add_argument("--decode-context", type=int, default=4096)
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--sink-tokens", type=int, default=65536, help="kv-sink-cache: tokens generated")
    ap.add_argument("--sink-backend", choices=("torch", "onnx"), default="onnx",
                    help="kv-sink-cache: run the captured program in torch, or its ONNX lowering in onnxruntime "
                         "(the same greedy tokens, about 2x faster per token on this CPU)")
    ap.add_argument("--sink-stream", type=int, default=7936,
                    help="kv-sink-cache: KJV tokens streamed for ppl (256 + this <= 8192: the plain model's range)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    ap.add_argument("--only", default="", help="comma-separated cache labels to (re)measure in ppl/passkey, "
                                               "e.g. 'int4 KIVI,fp8 e4m3'")
    ap.add_argument("--passkey-len", type=int, default=8192)
    ap.add_argument("--passkey-trials", type=int, default=2, help="seeded trials per depth")
    ap.add_argument("--mem-count", type=int, default=16, help="memory-tokens: M")
    ap.add_argument("--mem-segment", type=int, default=512, help="memory-tokens: S")
    ap.add_argument("--mem-steps", type=int, default=20, help="memory-tokens: training steps")
    ap.add_argument("--mem-length", type=int, default=10240, help="memory-tokens: tokens of the evaluation window")
    ap.add_argument("--gpu-decode", action="store_true", help="run only the GPU decode-kernel section (CUDA; "
                                                                  "skips on a machine without one)")
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
    if args.gpu_decode:
        args.sections = "gpu"
    for name in filter(None, args.sections.split(",")):
        print(f"[kv] {name} ...", file=sys.stderr)
        new = run_section(name, args)
        if "skipped" in new:  # keep what an earlier run on a machine that has one measured
            continue
        results = json.loads(store.read_text()) if store.is_file() else {}  # another run may have added a section
        if name in ("ppl", "passkey") and name in results:  # keep rows measured by earlier runs
            done = {(r["label"], r["length"]) for r in new["rows"]}
            new = {**results[name], **new}
            new["rows"] = [r for r in results[name]["rows"] if (r["label"], r["length"]) not in done] + new["rows"]
            have = {r["label"] for r in new["rows"]}
            if all(c[0] in have for c in CONFIGS if name == "ppl" or c[1] == "float32"):
                new.pop("partial", None)  # an earlier interrupted run's note no longer applies
        results[name] = new
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(store)
    try:
        plot(results, Path(args.out).with_suffix(".png"))
    except ImportError:
        print("[kv] matplotlib is not installed: the PNG was not redrawn", file=sys.stderr)
    tmp = Path(args.out).with_suffix(".md.tmp")
    tmp.write_text(render(results))
    tmp.replace(args.out)
    if "gpu" in results and "rows" in results["gpu"]:
        print(_gpu_md(results["gpu"]))
    print(f"wrote {args.out} (raw results: {store})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
