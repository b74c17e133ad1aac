"""The ``lcc`` command line (typer).  Bad input: one line on stderr, exit code 2; ``--debug`` shows tracebacks."""

from __future__ import annotations

import errno
import json
import math
import sys
from typing import Optional

import typer

from lcc.distributed import is_context_parallel
from lcc.errors import CheckFailed, RunFailed, UsageError
from lcc.ui import err, human_bytes, out, status, table as make_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lcc: compile Hugging Face causal LMs for long contexts.")
PassOpt = typer.Option(None, "--pass", "-p", help="NAME[:KEY=VALUE,...], repeatable, applied in order")
TrustNativeOpt = typer.Option(False, "--trust-native", help="run an artifact's native code (TVM, triton) even "
                              "though it was not compiled on this machine")


def _passes(values: Optional[list[str]]):
    if not values:
        return []
    from lcc.passes import parse_pass

    return [parse_pass(v) for v in values]


DtypeOpt = typer.Option(None, "--dtype", help="weights and compute: fp32, fp16 or bf16 (default fp32 on the CPU)")
KvDtypeOpt = typer.Option(None, "--kv-cache-dtype", help="a plain KV cache's dtype: fp32, fp16 or bf16 (default: "
                          "--dtype; quantized caches are the kv-quant pass)")


def _dtypes(dtype: Optional[str], kv_cache_dtype: Optional[str]) -> tuple[str, Optional[str]]:
    """(--dtype, --kv-cache-dtype) as torch names; usage errors before any work."""
    from lcc.dtypes import parse_dtype

    return parse_dtype(dtype) or "float32", parse_dtype(kv_cache_dtype, "--kv-cache-dtype")


def _load(model: str, dtype: str = "float32"):
    from lcc.models import load_model

    with status(f"loading {model}"):
        return load_model(model, dtype=dtype)


@app.command()
def inspect(model: str = typer.Argument("smollm2-135m", help="preset, HF directory (config.json is enough), "
                                       "hub id or .gguf file"),
            dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16: the weights' and "
                                      "KV cache's dtype the sizes are given in"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """The model's spec, with KV-cache bytes per token and at the trained length (reads no weights)."""
    from lcc.models import load_model

    with status(f"reading {model}"):
        loaded = load_model(model, dtype=dtype, weights=False)
    d = loaded.spec.to_dict()
    d["weights_hash"] = loaded.weights_hash or None  # None: not hashed yet (a full load hashes once)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    table = make_table(f"{loaded.spec.model_id}", show_header=False)
    for key, value in d.items():
        if key == "attention":
            kinds = sorted(set(value))
            value = ", ".join(f"{k} x{value.count(k)}" for k in kinds)
        elif key.startswith("kv_bytes"):
            value = f"{value:,} ({human_bytes(value)})"
        elif key == "params":
            value = f"{value:,}"
        table.add_row(key, str(value))
    out.print(table)


@app.command("passes")
def list_passes(as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """The registered passes: name, parameters with defaults, exact or approximate."""
    from lcc.passes import REGISTRY

    rows = [{"name": d.name, "exact": d.exact, "params": {p.name: p.default for p in d.params}, "doc": d.doc}
            for d in sorted(REGISTRY.values(), key=lambda d: d.name)]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = make_table("passes", ("name", "kind", "parameters", "what it does"))
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        table.add_row(r["name"], "exact" if r["exact"] else "approximate", params, r["doc"])
    out.print(table)


@app.command()
def run(model: str = typer.Argument(..., help="preset, HF directory, .gguf file, or an artifact from lcc compile"),
        prompt: str = typer.Option(..., "--prompt", help="text to continue"),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="tokens to generate"),
        passes: Optional[list[str]] = PassOpt,
        dtype: Optional[str] = DtypeOpt,
        kv_cache_dtype: Optional[str] = KvDtypeOpt,
        trust_native: bool = TrustNativeOpt):
    """Greedy generation through the captured program's prefill + decode."""
    from pathlib import Path

    specs = _passes(passes)
    _check_text(prompt, "--prompt")
    compute, cache_dtype = _dtypes(dtype, kv_cache_dtype)
    if (Path(model) / "lcc.json").is_file():
        _check_artifact_dtypes(Path(model), dtype and compute, cache_dtype)
        return _run_artifact(Path(model), prompt, max_new_tokens, specs, trust_native)
    import torch

    from lcc.capture.export import capture
    from lcc.passes import apply_passes, canonicalize
    from lcc.runtime import eos_ids, generate_ids

    loaded = _load(model, compute)
    if loaded.tokenizer is None:
        raise UsageError(f"{model} has no tokenizer files: lcc run needs tokenizer.json beside the weights")
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] < 1:
        raise UsageError("the prompt is empty: give --prompt with some text")
    capacity = -(-(ids.shape[1] + max_new_tokens) // 64) * 64
    kv_dtype = getattr(torch, cache_dtype) if cache_dtype else None
    _check_cache_fits(loaded.spec.kv_bytes_per_token(kv_dtype) * capacity, capacity, "--max-new-tokens")
    with status("capturing"):
        program = canonicalize(capture(loaded, capacity, cache_dtype=cache_dtype))
        program = apply_passes(program, specs)
    with status("generating"):
        if is_context_parallel(specs):  # N ranks forked from here (gloo / NCCL)
            from lcc.distributed.launch import generate as cp_generate

            new = cp_generate(program, ids, max_new_tokens, stop=eos_ids(loaded.model))
        else:
            new = generate_ids(program, ids, max_new_tokens, stop=eos_ids(loaded.model))
    print(loaded.tokenizer.decode(new, skip_special_tokens=True))


def _check_artifact_dtypes(path, dtype: Optional[str], cache_dtype: Optional[str]) -> None:
    """An artifact runs where and in the dtypes it was compiled for: a target this machine lacks, or a
    different --dtype / --kv-cache-dtype, is a usage error (given ones that agree are fine)."""
    from lcc import artifact
    from lcc.target import check_runnable, parse_target

    manifest = artifact.load(path)
    check_runnable(parse_target(manifest["target"]), str(path))
    have = {"--dtype": manifest["dtype"], "--kv-cache-dtype": manifest["cache"].get("dtype")}
    for flag, want in (("--dtype", dtype), ("--kv-cache-dtype", cache_dtype)):
        if want is not None and have[flag] is not None and want != have[flag]:
            raise UsageError(f"{flag} {want}: {path} was compiled for {have[flag]}; recompile it with "
                             f"{flag} {want} or leave the flag out")


def _check_text(text: str, flag: str) -> None:
    """Usage error unless ``text`` (from argv: undecodable bytes arrive as surrogates) is valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{flag} holds bytes that are not valid UTF-8 (at character {e.start}): give UTF-8 text")


def _available_memory() -> int:
    """Bytes of memory available to allocate now (MemAvailable), else the machine's physical memory."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_cache_fits(cache_bytes: int, tokens: int, flag: str) -> None:
    """Usage error, before allocating it, when a KV cache of ``tokens`` cannot fit in this machine's memory."""
    free = _available_memory()
    if cache_bytes > free:
        raise UsageError(f"{flag}: a KV cache of {tokens:,} tokens needs {human_bytes(cache_bytes)}, more than the "
                         f"{human_bytes(free)} of memory available here; ask for fewer tokens")


def _run_artifact(path, prompt: str, max_new_tokens: int, specs, trust_native: bool = False) -> None:
    import torch

    from lcc.artifact import load_runnable, load_tokenizer
    from lcc.capture.program import CacheLayout
    from lcc.runtime import generate_ids

    if specs:
        raise UsageError("--pass does not apply to a compiled artifact: its passes were fixed by lcc compile")
    with status(f"loading {path}"):
        manifest, runnable = load_runnable(path, trust_native=trust_native)
        tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise UsageError(f"{path} has no tokenizer files: recompile from a model that has a tokenizer")
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long)
    if ids.shape[1] < 1:
        raise UsageError("the prompt is empty: give --prompt with some text")
    eos = tokenizer.eos_token_id
    stop, layout = {eos} if eos is not None else set(), CacheLayout.from_dict(manifest["cache"])
    passes = manifest["plan"].get("passes")
    with status("generating"):
        if is_context_parallel(passes):  # runs on the N ranks its pass fixed
            from lcc.distributed.launch import generate as cp_generate, ranks_of

            new = cp_generate(runnable, ids, max_new_tokens, stop=stop, ranks=ranks_of(passes), cache_layout=layout,
                              device="cuda" if manifest["target"].startswith("cuda") else "cpu")
        else:
            new = generate_ids(runnable, ids, max_new_tokens, stop=stop, cache_layout=layout)
    print(tokenizer.decode(new))


@app.command("compile")
def compile_cmd(model: str = typer.Argument("smollm2-135m", help="preset, HF directory or .gguf file"),
                target_len: str = typer.Option(..., "--target-len", help="context length to compile for, e.g. 32k"),
                backend: str = typer.Option("torch", "--backend", help="torch, onnx, tvm or triton"),
                passes: Optional[list[str]] = PassOpt,
                out_dir: Optional[str] = typer.Option(None, "--out", help="artifact directory (default MODEL-LEN-BACKEND)"),
                target: Optional[str] = typer.Option(None, "--target", help="where the artifact runs: cpu "
                                                     "(default), cuda, cuda:sm_80 or cuda:sm_90"),
                profile: Optional[str] = typer.Option(None, "--profile", help="the planner's hardware profile "
                                                      "(default: the target's: cpu, or the local GPU / h100)"),
                device: Optional[str] = typer.Option(None, "--device", hidden=True, help="old name of --profile"),
                dtype: Optional[str] = DtypeOpt,
                kv_cache_dtype: Optional[str] = KvDtypeOpt,
                force: bool = typer.Option(False, "--force", help="replace an existing --out directory"),
                no_cache: bool = typer.Option(False, "--no-cache", help="compile even when the compile cache "
                                              "holds these inputs' artifact, and do not store this one"),
                quality: str = typer.Option("balanced", "--quality", help="the planner's quality level: exact, "
                                            "balanced (default), retrieval or any (README: Quality levels)")):
    """Plan (unless --pass is given), apply, check every stage, lower, and write an artifact directory.

    An identical earlier compile's artifact comes from the compile cache ($LCC_CACHE/compiled) unless --no-cache."""
    from pathlib import Path

    from lcc.backends import get_backend
    from lcc.compile import compile_model, default_out, from_cache_by_name
    from lcc.ui import RichStages
    from lcc.lengths import check_min_length, parse_length

    from lcc.backends import check_dtype, default_dtype
    from lcc.target import default_profile, device_alias, parse_target

    n = check_min_length(parse_length(target_len), "--target-len", target_len)
    specs = _passes(passes) if passes else None
    from lcc.quality.rank import check_quality

    check_quality(quality)
    profile, target = device_alias(device, profile, target, "profile")
    where = parse_target(target)
    device = profile or default_profile(where)
    compute, cache_dtype = _dtypes(dtype, kv_cache_dtype)
    if dtype is None and where.is_cuda:
        compute = default_dtype(get_backend(backend), str(where))
    check_dtype(get_backend(backend), compute)  # usage errors before any slow work
    plan_fn = _planner()
    if plan_fn is not None:
        from lcc.cost.hardware import load_profile

        load_profile(device)  # an unknown profile is a usage error before loading
    from lcc.outdir import check_out

    if out_dir is not None:
        check_out(Path(out_dir), force)  # before any slow work
    result = None if no_cache else from_cache_by_name(model, n, backend, specs, out_dir, force, device, compute,
                                                      cache_dtype, str(where), quality)
    if result is None:
        loaded = _load(model, compute)
        dest = Path(out_dir) if out_dir else default_out(loaded.spec.model_id, n, backend)
        with RichStages(console=err) as stages:
            result = compile_model(loaded, n, backend, specs, dest, force=force, device=device, plan_fn=plan_fn,
                                   progress=stages, dtype=compute, kv_cache_dtype=cache_dtype, target=str(where),
                                   cache=not no_cache, quality=quality)
    low = result.report["lowered"]
    check = (f"{low['name']} unchecked ({low['unchecked']})" if "unchecked" in low else
             f"{low['name']} max abs error {low['max_abs']:.2e} against the rewritten program")
    out.print(f"wrote {result.out}{' (from the compile cache)' if result.cached else ''}: passes "
              f"{', '.join(result.manifest['plan']['passes']) or '(none)'}; {check}")


def _planner():
    try:
        from lcc.cost.planner import plan_for_compile
    except ImportError:
        return None
    return plan_for_compile


@app.command()
def diff(model: str = typer.Argument("smollm2-135m", help="preset, HF directory or .gguf file"),
         passes: Optional[list[str]] = PassOpt,
         length: str = typer.Option("128", "--len", help="tokens of input, e.g. 512 or 4k"),
         backend: Optional[str] = typer.Option(None, "--backend", help="also lower to torch, onnx or tvm and "
                                               "report that stage"),
         dtype: Optional[str] = DtypeOpt,
         as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Errors of every stage (captured, canonical, each pass, lowered) against HF eager; exit 1 if one is off."""
    from lcc.diff import diff as run_diff
    from lcc.lengths import check_min_length, parse_length

    specs = _passes(passes)
    n = check_min_length(parse_length(length), "--len", length)
    compute, _ = _dtypes(dtype, None)
    if backend is not None:
        from lcc.diff.lowered import check_backend

        check_backend(backend, compute)
    loaded = _load(model, compute)
    s = loaded.spec
    # the oracle (HF eager) holds one layer's L x L scores, the logits of every stage and every hidden state
    need = 4 * n * (s.heads * n + 4 * s.vocab + (s.layers + 1) * s.hidden * 4)
    if need > _available_memory():
        raise UsageError(f"--len {length}: comparing {n:,} tokens needs about {human_bytes(need)}, more than the "
                         f"{human_bytes(_available_memory())} of memory available here; give a shorter --len")
    with status("diff") as spinner:
        reports = run_diff(loaded, specs, n, progress=lambda s: spinner.update(f"diff: {s}"), backend=backend)
    if as_json:
        stages = [{k: v for k, v in r.to_dict().items() if k != "ok"} | {"ok": r.ok} for r in reports]
        print(json.dumps(_json_safe({"model": loaded.spec.model_id, "length": n, "stages": stages}), indent=2,
                         allow_nan=False))
    else:
        table = make_table(f"{loaded.spec.model_id}, {n} tokens, against HF eager",
                           ("stage", "kind", "max abs", "rel", "cosine", "KL", "top-1", "first div. layer", "ok"))
        for r in reports:
            table.add_row(r.name, "exact" if r.exact else "approx", f"{r.max_abs:.2e}", f"{r.rel:.2e}",
                          f"{r.cosine:.6f}", f"{r.kl:.2e}", f"{r.top1:.3f}",
                          "-" if r.first_divergent_layer is None else str(r.first_divergent_layer),
                          "yes" if r.ok else "[red]NO[/red]")
        out.print(table)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def _json_safe(value):
    """``value`` with every non-finite float as None (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@app.command("eval")
def eval_cmd(model: str = typer.Argument("smollm2-135m", help="preset, HF directory, .gguf file, or an artifact "
                                         "from lcc compile"),
             task: str = typer.Option(..., "--task", help="passkey, ppl[:last=K], "
                                      "niah[:needles=N,keys=K,values=V,queries=Q] or vt[:chains=C,hops=H]"),
             lengths: str = typer.Option("4k,8k", "--lengths", help="comma-separated lengths, e.g. 4k,8k,16k"),
             passes: Optional[list[str]] = PassOpt,
             trials: int = typer.Option(10, "--trials", min=1, help="passkey: seeded trials per length and depth; "
                                        "niah, vt: seeded trials per length"),
             windows: int = typer.Option(2, "--windows", min=1, help="ppl: windows of text per length"),
             text: Optional[str] = typer.Option(None, "--text", help="ppl, niah, vt: a text file (default: the "
                                                "KJV Bible)"),
             as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
             plot: Optional[str] = typer.Option(None, "--plot", help="write a PNG plot here"),
             target: Optional[str] = typer.Option(None, "--target", help="cpu (default) or cuda: where the "
                                                  "program runs (Triton kernels for the lcc ops on cuda)"),
             device: Optional[str] = typer.Option(None, "--device", hidden=True, help="old name of --target"),
             dtype: Optional[str] = DtypeOpt,
             kv_cache_dtype: Optional[str] = KvDtypeOpt,
             trust_native: bool = TrustNativeOpt):
    """Passkey, RULER niah / vt accuracy or perplexity at each length, through the (rewritten) program or an
    artifact.

    A generated trial at length L prompts with L minus the tokens it generates (passkey: 8), so an artifact
    compiled for L is evaluated at L; ppl:last=K scores the text's final K tokens at every length."""
    from lcc.eval import DEPTHS, eval_passkey, eval_ppl, eval_ruler, is_artifact, plot as plot_results
    from lcc.eval.tasks import Task
    from lcc.eval.text import load_text
    from lcc.lengths import parse_lengths

    from lcc.target import device_alias, parse_target

    spec = Task.parse(task)
    if plot is not None:
        from lcc.outdir import check_output_file

        check_output_file(plot, "--plot", ".png")
    _, target = device_alias(device, None, target, "target")
    where = parse_target(target)
    device = "cuda" if where.is_cuda else "cpu"
    compute, cache_dtype = _dtypes(dtype, kv_cache_dtype)
    artifact = is_artifact(model)
    if artifact and passes:
        raise UsageError("--pass does not apply to a compiled artifact: its passes were fixed by lcc compile")
    if artifact:
        if target is not None:
            raise UsageError("--target does not apply to a compiled artifact: it runs where it was compiled for "
                             "(its lcc.json's target)")
        _check_artifact_dtypes(model, dtype and compute, cache_dtype)
    elif where.is_cuda:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--target {target}: this machine has no CUDA device; use --target cpu")
    specs = _passes(passes)
    ns = parse_lengths(lengths)
    corpus = load_text(text) if spec.name != "passkey" else None
    if artifact:
        from lcc.eval import check_fits, load_artifact_program

        with status(f"loading {model}"):
            program = loaded = load_artifact_program(model, trust_native=trust_native)
        check_fits(program, spec.name, ns)
        name, label = loaded.manifest.model_id, " + ".join(loaded.manifest.plan["passes"]) or "no passes"
        label = f"{label}; {loaded.manifest.backend} artifact"
    else:
        program, loaded = None, _load(model, compute)
        if loaded.tokenizer is None:
            raise UsageError(f"{model} has no tokenizer files: lcc eval needs tokenizer.json beside the weights")
        name, label = loaded.spec.model_id, " + ".join(str(s) for s in specs) or "no passes"
        if cache_dtype is not None:
            from lcc.eval import prepare

            entries = ("prefill_logits",) if spec.name == "ppl" else ("prefill", "decode")
            with status("capturing"):
                program = prepare(loaded, specs, max(ns), entries, device, cache_dtype)
    ranks = None
    if is_context_parallel(loaded.manifest.plan["passes"] if artifact else specs):  # N ranks forked from here
        from lcc.distributed.launch import ranks_of

        ranks = ranks_of(loaded.manifest.plan["passes"] if artifact else specs)
        if program is None:  # captured once, here: the ranks share it
            from lcc.eval import prepare

            entries = ("prefill_logits",) if spec.name == "ppl" else ("prefill", "decode")
            with status("capturing"):
                program = prepare(loaded, specs, max(ns), entries, "cpu", cache_dtype)
    steps = len(ns) * {"passkey": trials * len(DEPTHS), "ppl": 1}.get(spec.name, trials)
    from lcc.ui import counter

    def evaluate(program, progress):
        if spec.name == "passkey":
            return eval_passkey(loaded, specs, ns, trials=trials, progress=progress, device=device, program=program)
        if spec.name == "ppl":
            return eval_ppl(loaded, specs, ns, corpus, windows=windows, progress=progress, device=device,
                            program=program, **spec.kwargs)
        return eval_ruler(loaded, specs, ns, spec.name, corpus, trials=trials, progress=progress, device=device,
                          program=program, **spec.kwargs)

    with counter() as bar:
        job = bar.add_task(f"{spec} on {name}" + (f" ({ranks} ranks)" if ranks else ""), total=steps)
        if ranks:  # the ranks' progress is not seen here: the bar completes when they return
            from lcc.distributed.launch import run_program

            results = run_program(program, evaluate, None, ranks=ranks, device=device)
            bar.advance(job, steps)
        else:
            results = evaluate(program, lambda: bar.advance(job))
    metric = "ppl" if spec.name == "ppl" else "accuracy"
    if plot:
        import os
        import tempfile

        fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(plot)))
        os.close(fd)
        plot_results({label: results}, metric, tmp, f"{name}: {spec}")
        os.replace(tmp, plot)
    if as_json:
        doc = {"model": name, "passes": loaded.manifest.plan["passes"] if artifact else [str(s) for s in specs],
               "task": str(spec), "results": [r.to_dict() for r in results]}
        if artifact:
            doc["artifact"] = {"path": str(model), "backend": loaded.manifest.backend,
                               "target_len": loaded.manifest.target_len}
        print(json.dumps(doc, indent=2))
        return
    protocol = f", {results[0].metrics['protocol']} protocol" if spec.name == "ppl" else ""
    extra = ("score",) if spec.name in ("niah", "vt") else ()
    table = make_table(f"{name} {spec} ({label}{protocol})", ("length", metric, *extra))
    for r in results:
        table.add_row(str(r.length), *(f"{r.metrics[m]:.3f}" if m != "ppl" else f"{r.metrics[m]:.2f}"
                                       for m in (metric, *extra)))
    out.print(table)


@app.command("quality")
def quality_cmd(model: str = typer.Argument("smollm2-135m", help="preset, HF directory or .gguf file"),
                lengths: str = typer.Option(..., "--lengths", help="comma-separated lengths, e.g. 16k,32k"),
                methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated position methods "
                                                      "(default all: none,linear,ntk,dynamic-ntk,yarn,rerope,"
                                                      "leaky-rerope,kv-sink-cache)"),
                trials: int = typer.Option(10, "--trials", help="passkey: seeded trials per depth (3 depths)"),
                windows: int = typer.Option(2, "--windows", help="ppl: first windows of text per length"),
                target: str = typer.Option("cpu", "--target", help="cpu or cuda: where the measurement runs"),
                text: Optional[str] = typer.Option(None, "--text", help="ppl: a text file (default: the KJV Bible)"),
                as_json: bool = typer.Option(False, "--json", help="print the rows measured as JSON")):
    """Measure and store the model's quality records: perplexity and passkey of each position method's pass
    list (the planner's, at each length) and of the unmodified model at its trained length; resumable."""
    from lcc.lengths import parse_lengths
    from lcc.quality.measure import Protocol, measure, parse_methods, pending, records_path, store, user_records

    ns = parse_lengths(lengths)
    names = parse_methods(methods)
    protocol = Protocol(trials=trials, windows=windows)
    if target != "cpu" and not target.startswith("cuda"):
        raise UsageError(f"--target {target}: use cpu or cuda")
    if target != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--target {target}: CUDA is not available on this machine; use --target cpu")
    from lcc.eval.text import load_text

    corpus = load_text(text)
    loaded = _load(model)
    if loaded.tokenizer is None:
        raise UsageError(f"{model} has no tokenizer files: lcc quality needs tokenizer.json beside the weights")
    trained = loaded.spec.trained_len
    records = user_records(loaded.weights_hash, loaded.spec.model_id, trained)
    path = records_path(loaded.weights_hash)
    jobs = pending(records, ns, names, trained, protocol)
    source = (f"lcc quality {model} --lengths {lengths}" + (f" --methods {methods}" if methods else "")
              + f" --trials {trials} --windows {windows} --target {target}" + (f" --text {text}" if text else ""))
    from lcc.ui import step_bar

    with step_bar() as bar:
        job = bar.add_task(f"quality of {loaded.spec.model_id}", total=len(jobs) * (protocol.passkey_trials + 1))
        rows = measure(loaded, jobs, protocol, corpus, device=target, source=source,
                       on_row=lambda row: store(records, row, path), progress=lambda: bar.advance(job))
    if as_json:
        print(json.dumps({"model": loaded.spec.model_id, "weights_hash": loaded.weights_hash, "records": str(path),
                          "rows": [r.to_dict() for r in rows]}, indent=2))
        return
    table = make_table(f"{loaded.spec.model_id}: {len(rows)} rows measured into {path}",
                       ("passes", "length", "ppl", "passkey"))
    for r in rows:
        table.add_row(" + ".join(r.passes), str(r.length), f"{r.ppl:.2f}", f"{r.passkey:.2f}")
    out.print(table)
    if not rows:
        out.print("nothing to measure: every row is already in the records (same passes, length and protocol)")
    from lcc.quality.measure import method_passes

    unplanned = [f"{m} at {n}" for n in ns for m in names if m not in method_passes(n, trained)]
    if unplanned:
        out.print(f"not measured (no position method is planned within the trained length {trained}): "
                  + ", ".join(unplanned))


@app.command("train-memory")
def train_memory_cmd(model: str = typer.Argument("smollm2-135m", help="preset, HF directory or .gguf file"),
                     count: int = typer.Option(16, "--count", min=1, help="memory tokens M"),
                     segment: int = typer.Option(512, "--segment", min=2, help="tokens per segment S"),
                     steps: int = typer.Option(20, "--steps", min=1, help="optimizer steps"),
                     text: str = typer.Option(..., "--text", help="a text file to fit on"),
                     out_file: Optional[str] = typer.Option(None, "--out", help="safetensors file to write "
                                                            "(default memory-MODEL-mM-sS.safetensors)"),
                     lr: float = typer.Option(1e-2, "--lr", help="Adam learning rate"),
                     unroll: int = typer.Option(2, "--unroll", min=1, help="segments per step (BPTT)"),
                     seed: int = typer.Option(0, "--seed", help="seed of the initial memory and the text windows")):
    """Fit only the memory-tokens embeddings on real text with the model frozen; use them with
    --pass memory-tokens:count=M,segment=S,memory=FILE."""
    from pathlib import Path

    from lcc.eval.text import load_text
    from lcc.memory import train_memory
    from lcc.passes.memory_tokens import save_memory

    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr {lr}: give a positive finite learning rate, e.g. 1e-2")
    corpus = load_text(text)
    loaded = _load(model)
    if loaded.tokenizer is None:
        raise UsageError(f"{model} has no tokenizer files: lcc train-memory needs tokenizer.json beside the weights")
    target = Path(out_file or f"memory-{Path(loaded.spec.model_id).name}-m{count}-s{segment}.safetensors")
    from lcc.outdir import check_output_file

    check_output_file(target, "--out", ".safetensors")
    ids = loaded.tokenizer(corpus, add_special_tokens=False)["input_ids"]
    from lcc.ui import step_bar

    with step_bar() as bar:
        job = bar.add_task("train-memory", total=steps)
        tick = lambda step, loss: bar.update(job, advance=1, description=f"train-memory loss {loss:.3f}")  # noqa: E731
        memory, losses = train_memory(loaded, count, segment, steps, ids, lr=lr, seed=seed, unroll=unroll,
                                      progress=tick)
    save_memory(target, memory, {"model": loaded.spec.model_id, "weights_hash": loaded.weights_hash, "count": count,
                                 "segment": segment, "steps": steps, "lr": lr, "unroll": unroll, "seed": seed,
                                 "first_loss": f"{losses[0]:.4f}", "last_loss": f"{losses[-1]:.4f}"})
    out.print(f"wrote {target}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {steps} steps; use "
              f"--pass memory-tokens:count={count},segment={segment},memory={target}")


COST_COMMANDS = ("cost", "plan", "calibrate")


def _register_cost_commands() -> None:
    """``lcc cost``, ``lcc plan``, ``lcc calibrate`` live with the cost model (registered once)."""
    if any(c.name in COST_COMMANDS for c in app.registered_commands):
        return
    try:
        from lcc.cost import cli as cost_cli
    except ImportError:
        return
    for name in COST_COMMANDS:
        app.command(name)(getattr(cost_cli, name))


def _needs_cost_commands(argv: list[str]) -> bool:
    """Whether the command line may reach a cost command: it names one, or none of this module's own (``--help``
    and an unknown command list every command).  Importing :mod:`lcc.cost` takes seconds (it imports the
    symbolic cost model), so ``lcc run`` and the others do without it."""
    own = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    first = next((a for a in argv if not a.startswith("-")), None)
    return first not in own


def _click_exceptions():
    """typer may vendor its own click; catch both."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["UsageError"]))
        except ImportError:
            pass
    usage = tuple(m.UsageError for m in mods)
    exits = tuple(m.Exit for m in mods if hasattr(m, "Exit")) + (SystemExit,) * 0
    aborts = tuple(m.Abort for m in mods if hasattr(m, "Abort")) or (KeyboardInterrupt,)
    return usage, exits, aborts


def _quiet() -> None:
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the hub's setting
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already (a caller's): set it directly; else importing it costs
        from transformers.utils import logging as hf_logging  # seconds that `lcc run` of an artifact never needs

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


DISK_FULL = 3  # exit code of a write that failed for lack of space (ENOSPC, EDQUOT)


def _disk_full(e: BaseException) -> str | None:
    """One line when ``e`` (or what caused it) is a write that failed for lack of space, else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else ""
            return f"no space left on the device{where}: free some space and run again (nothing was left behind)"
        if "No space left on device" in str(e):  # native writers (safetensors, onnx, tvm) raise their own types
            return "no space left on the device: free some space and run again (nothing was left behind)"
        e = e.__cause__ or e.__context__
    return None


def _catch_sigint() -> tuple[list, object]:
    """Make SIGINT raise KeyboardInterrupt and remember it, so an interrupt a library swallows still exits 130;
    (the list it appends to, the handler it replaced)."""
    import signal
    import threading

    seen: list = []
    if threading.current_thread() is not threading.main_thread():
        return seen, None

    def on_sigint(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    return seen, signal.signal(signal.SIGINT, on_sigint)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not debug:
        _quiet()
    if _needs_cost_commands(argv):
        _register_cost_commands()
    usage, exits, aborts = _click_exceptions()
    interrupted, previous = _catch_sigint()
    try:
        rv = app(args=argv, prog_name="lcc", standalone_mode=False)
        if interrupted:  # a library swallowed the KeyboardInterrupt: the user still asked to stop
            return 130
        return rv if isinstance(rv, int) else 0  # click hands back typer.Exit's code when not standalone
    except exits as e:
        return 130 if interrupted else e.exit_code
    except (UsageError, *usage) as e:
        if debug:
            raise
        msg = str(e) if isinstance(e, UsageError) else e.format_message()
        print(f"lcc: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    except (*aborts, KeyboardInterrupt):
        return 130
    except (CheckFailed, RunFailed) as e:
        if debug:
            raise
        print(f"lcc: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        full = _disk_full(e)
        if full is None or debug:
            raise
        print(f"lcc: error: {full}", file=sys.stderr)
        return DISK_FULL
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGINT, previous)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
