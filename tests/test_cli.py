"""The command line as a user meets it: outputs, JSON, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest


def lcc(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lcc", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,fragment", [
    (["inspect", "/no/such/dir"], "neither a preset nor an existing path"),
    (["inspect", "tiny-bloom"], "unknown preset 'tiny-bloom'; presets: smollm2-135m"),
    (["diff", "tiny-llama", "--len", "12q"], "bad length '12q'"),
    (["diff", "tiny-llama", "--len", "0"], "must be positive"),
    (["diff", "tiny-llama", "--len", "-5"], "must be positive"),
    (["diff", "tiny-llama", "--pass", "warp-drive"], "unknown pass 'warp-drive'"),
    (["diff", "tiny-llama", "--pass", "flash:speed=11"], "unknown parameter 'speed=11'"),
    (["diff", "tiny-llama", "--no-such-option"], "No such option"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(args, fragment):
    r = lcc(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback():
    r = lcc("--debug", "inspect", "/no/such/dir")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_inspect_json_reports_cache_bytes():
    r = lcc("inspect", "tiny-qwen2", "--json")
    d = json.loads(r.stdout)
    assert d["family"] == "qwen2" and d["attention"] == ["full", "sliding:24", "sliding:24"]
    assert d["kv_bytes_per_token"] == 2 * 3 * 2 * 16 * 4
    assert d["kv_bytes_at_trained_len"] == d["kv_bytes_per_token"] * 256


def test_passes_lists_the_registry():
    r = lcc("passes", "--json")
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"flash", "sliding-window", "attention-chunked"} <= names


def test_diff_json_and_exit_codes():
    r = lcc("diff", "tiny-mistral", "--len", "48", "--pass", "sliding-window:window=8,sinks=2", "--pass", "flash",
            "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    names = [s["name"] for s in d["stages"]]
    assert names == ["hf-eager", "captured", "canonical", "sliding-window:window=8,sinks=2,layers=all",
                     "flash:layers=all"]
    keys = {"name", "exact", "max_abs", "rel", "cosine", "kl", "top1", "first_divergent_layer"}
    assert all(keys <= set(s) for s in d["stages"])
    canonical, sliding = d["stages"][2], d["stages"][3]
    assert canonical["ok"] and canonical["max_abs"] <= canonical["limit"] and canonical["top1"] == 1.0
    assert not sliding["exact"] and sliding["max_abs"] > 1e-3 and sliding["first_divergent_layer"] == 0


@pytest.mark.slow
def test_lcc_run_smollm2_prints_transformers_greedy_continuation(smollm2):
    import torch

    prompt = "The capital of France is"
    ids = smollm2.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = smollm2.model.generate(ids, max_new_tokens=16, do_sample=False)
    want = smollm2.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    r = lcc("run", "smollm2-135m", "--prompt", prompt, "--max-new-tokens", "16")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"


@pytest.mark.slow
def test_lcc_diff_smollm2_canonical_within_the_fp32_rule():
    r = lcc("diff", "smollm2-135m", "--len", "512", "--json")
    assert r.returncode == 0, r.stderr
    stages = {s["name"]: s for s in json.loads(r.stdout)["stages"]}
    canonical = stages["canonical"]
    assert canonical["ok"] and canonical["max_abs"] <= canonical["limit"] and canonical["top1"] == 1.0
