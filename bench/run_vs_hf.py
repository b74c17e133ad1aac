"""``lcc run`` of a compiled artifact against transformers' ``generate`` on the same weights, side by side.

Three measurements, each in its own subprocess (wall time and that child's own peak RSS from
``os.wait4``), repeated ``--repeats`` times, alternating lcc and transformers so that a busy
machine weighs on both alike:

- end to end: ``python -m lcc run ARTIFACT --prompt P --max-new-tokens N`` against a script that
  imports transformers, loads the artifact's model (its cached HF directory) with
  ``AutoModelForCausalLM`` (sdpa, fp32, the artifact's RoPE scaling as ``rope_parameters``) and
  calls ``generate`` (greedy, ``min_new_tokens=max_new_tokens=N``), both printing the text;
- decode tokens/s at each ``--contexts`` length: lcc loads the artifact in process
  (``lcc.artifact.load_runnable``) and times decode steps through the entry the runtime calls
  (``lcc.runtime.owned_entry``: cache written in place, ops called directly); transformers times
  ``model(...)`` steps on a ``DynamicCache``. Both caches are filled
  with ``L`` random keys and values first (a real prefill of 16k tokens takes minutes on a
  small CPU and does not change what a decode step costs).

    python bench/run_vs_hf.py [--artifact out/smollm2-32k] [--contexts 512,4k,16k] [--repeats 2]
                              [--threads N] [--markdown docs/run-speed.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# greedy SmolLM2-135M-Instruct does not reach EOS within 64 tokens of this prompt, so `lcc run` (which stops at
# EOS and has no flag to ignore it) and generate(min_new_tokens=64) print the same 64 tokens
PROMPT = "Once upon a time, in a small village by the sea,"


CHILD_ENV = dict(os.environ)  # --threads sets OMP_NUM_THREADS here, the same for every child


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one child process, reaped with ``os.wait4`` for its own usage."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, text=True, env=CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:5])}... failed ({proc.returncode}):\n{err.read()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def hf_dir(manifest: dict) -> Path:
    """The cached HF directory of the artifact's model ($LCC_CACHE or ~/.cache/lcc)."""
    base = Path(os.environ.get("LCC_CACHE") or Path.home() / ".cache" / "lcc")
    path = base / manifest["model"]["id"]
    if not (path / "config.json").is_file():
        raise SystemExit(f"no HF directory for {manifest['model']['id']} at {path}: run `lcc inspect "
                         f"{manifest['model']['id']}` once to cache it")
    return path


def rope_parameters(manifest: dict) -> dict | None:
    """The artifact's RoPE scaling in transformers' ``rope_parameters`` terms (dynamic-ntk only)."""
    for p in manifest["plan"]["passes"]:
        name, _, args = p.partition(":")
        if name != "rope-scaling":
            continue
        kw = dict(a.split("=") for a in args.split(","))
        if kw.get("method") != "dynamic-ntk":
            raise SystemExit(f"{p}: this benchmark maps only dynamic-ntk to transformers' rope_parameters")
        return {"rope_type": "dynamic", "factor": float(kw["factor"])}
    return None


def load_hf(model_dir: str, rope: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if rope != "null":
        config.rope_parameters = {**config.rope_parameters, **json.loads(rope)}
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    return model.eval()


def hf_generate(args) -> None:
    """The transformers script of the end-to-end row: load, generate, print."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_hf(args.model, args.rope)
    ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def decode_lcc(args) -> None:
    """Decode tokens/s of the artifact after ``args.context`` cached positions."""
    import torch
    from lcc.artifact import load_runnable
    from lcc.capture.program import CacheLayout
    from lcc.runtime import empty_cache, owned_entry

    manifest, runnable = load_runnable(Path(args.artifact))
    layout = CacheLayout.from_dict(manifest.cache)
    decode = owned_entry(runnable.entries["decode"])
    cache = empty_cache(layout, "cpu")
    gen = torch.Generator().manual_seed(0)
    for t in cache:
        t[:, :, :args.context].copy_(torch.randn(t[:, :, :args.context].shape, generator=gen))
    print(json.dumps({"tok_s": timed_steps(lambda tok, pos: decode(tok, pos, *cache)[0], args)}))


def decode_hf(args) -> None:
    """Decode tokens/s of transformers' model after ``args.context`` cached positions (DynamicCache)."""
    import torch
    from transformers import DynamicCache

    model = load_hf(args.model, args.rope)
    cfg = model.config
    cache = DynamicCache(config=cfg)
    gen = torch.Generator().manual_seed(0)
    shape = (1, cfg.num_key_value_heads, args.context, cfg.head_dim)
    for layer in range(cfg.num_hidden_layers):
        cache.update(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), layer)

    def step(tok, pos):
        return model(input_ids=tok, past_key_values=cache, position_ids=pos.view(1, 1),
                     cache_position=pos.view(1), logits_to_keep=1, use_cache=True).logits

    print(json.dumps({"tok_s": timed_steps(step, args)}))


def timed_steps(step, args) -> float:
    """Greedy steps from position ``args.context``: ``args.warmup`` untimed, then ``args.steps`` timed."""
    import torch

    tok = torch.tensor([[1]])
    with torch.inference_mode():
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                start = time.perf_counter()
            logits = step(tok, torch.tensor(args.context + i))
            tok = logits[:, -1].argmax(-1).view(1, 1)
    return args.steps / (time.perf_counter() - start)


def versions() -> str:
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}"


def compare(args) -> None:
    from lcc.lengths import format_length, parse_length

    if args.threads:
        CHILD_ENV["OMP_NUM_THREADS"] = str(args.threads)
    manifest = json.loads((Path(args.artifact) / "lcc.json").read_text())
    model, rope = str(hf_dir(manifest)), json.dumps(rope_parameters(manifest))
    me = [sys.executable, str(Path(__file__).resolve())]
    lcc_cmd = [sys.executable, "-m", "lcc", "run", args.artifact, "--prompt", args.prompt,
               "--max-new-tokens", str(args.new_tokens)]
    hf_cmd = me + ["hf-generate", "--model", model, "--rope", rope, "--prompt", args.prompt,
                   "--new-tokens", str(args.new_tokens)]
    contexts = [parse_length(c) for c in args.contexts.split(",")]
    rows = {"e2e": [], **{c: [] for c in contexts}}
    for r in range(args.repeats):
        lw, lr, ltext = run_child(lcc_cmd)
        hw, hr, htext = run_child(hf_cmd)
        rows["e2e"].append((lw, lr, hw, hr, ltext.strip() == htext.strip()))
        print(f"run {r + 1}: end to end lcc {lw:.1f} s {lr:.0f} MB | transformers {hw:.1f} s {hr:.0f} MB | "
              f"same text: {rows['e2e'][-1][4]}", flush=True)
        for c in contexts:
            common = ["--context", str(c), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            ls = json.loads(run_child(me + ["decode-lcc", "--artifact", args.artifact] + common)[2])["tok_s"]
            hs = json.loads(run_child(me + ["decode-hf", "--model", model, "--rope", rope] + common)[2])["tok_s"]
            rows[c].append((ls, hs))
            print(f"run {r + 1}: decode at {format_length(c)}: lcc {ls:.2f} tok/s | transformers {hs:.2f} tok/s "
                  f"| ratio {ls / hs:.2f}", flush=True)
    cache_mb = manifest["cache"]["layers"] * 2 * manifest["cache"]["kv_heads"] * manifest["cache"]["capacity"] * \
        manifest["cache"]["head_dim"] * 4 / 2**20
    text = markdown(args, rows, contexts, cache_mb, format_length)
    print(text)
    if args.markdown:
        out = Path(args.markdown)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)


def markdown(args, rows, contexts, cache_mb, format_length) -> str:
    lines = [f"## `lcc run` against transformers' `generate` ({datetime.date.today()})", "",
             f"Device: this machine's CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
             f"{versions()}, intra-op threads: {args.threads or 'torch default'}. The machine was shared with "
             "other jobs while this ran, so wall times are noisy: "
             f"{args.repeats} runs, lcc and transformers alternated. Artifact `{args.artifact}` "
             f"(fp32 cache reserved for its capacity: {cache_mb:.0f} MB); prompt {args.prompt!r}, "
             f"{args.new_tokens} new tokens.", "",
             "| run | lcc wall (s) | transformers wall (s) | wall ratio | lcc peak RSS (MB) | transformers peak RSS "
             "(MB) | RSS limit 1.5x + cache (MB) | same text |",
             "|---|---|---|---|---|---|---|---|"]
    for i, (lw, lr, hw, hr, same) in enumerate(rows["e2e"], 1):
        lines.append(f"| {i} | {lw:.1f} | {hw:.1f} | {lw / hw:.2f} | {lr:.0f} | {hr:.0f} | {1.5 * hr + cache_mb:.0f} "
                     f"| {same} |")
    lines += ["", f"Decode tokens/s after L cached positions ({args.steps} timed steps after {args.warmup}):", "",
              "| L | run | lcc | transformers | ratio |", "|---|---|---|---|---|"]
    for c in contexts:
        for i, (ls, hs) in enumerate(rows[c], 1):
            lines.append(f"| {format_length(c)} | {i} | {ls:.2f} | {hs:.2f} | {ls / hs:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    for name in ("hf-generate", "decode-lcc", "decode-hf"):
        p = sub.add_parser(name)
        p.add_argument("--model")
        p.add_argument("--artifact")
        p.add_argument("--rope", default="null")
        p.add_argument("--prompt", default=PROMPT)
        p.add_argument("--new-tokens", type=int, default=64)
        p.add_argument("--context", type=int, default=512)
        p.add_argument("--steps", type=int, default=8)
        p.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--artifact", default="out/smollm2-32k")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--contexts", default="512,4k,16k")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of every child (default: torch's)")
    ap.add_argument("--markdown", default=None, help="write the section to this file (e.g. docs/run-speed.md)")
    args = ap.parse_args()
    {"hf-generate": hf_generate, "decode-lcc": decode_lcc, "decode-hf": decode_hf}.get(args.cmd, compare)(args)


if __name__ == "__main__":
    main()
