"""``lcc compile``: the artifact directory, its determinism, atomic writes, and running it."""

import json
import subprocess
import sys

import pytest
import torch

from lcc.compile import compile_model, load_artifact
from lcc.errors import UsageError
from lcc.passes import parse_pass
from lcc.runtime import generate_ids


def test_artifact_runs_and_matches_the_in_process_program(tmp_path, tiny):
    loaded = tiny("mistral")
    passes = [parse_pass("sliding-window:window=16,sinks=2")]
    result = compile_model(loaded, 256, "torch", passes, tmp_path / "a")
    m = result.manifest
    assert m["model"]["weights_hash"] == loaded.weights_hash and m["target_len"] == 256
    assert m["plan"]["passes"] == ["sliding-window:window=16,sinks=2,layers=all"]
    assert {"prefill.json", "decode.json", "weights.safetensors"} <= set(m["files"])
    assert [c["stage"] for c in m["checks"]][:3] == ["hf-eager", "captured", "canonical"]
    for f in ("lcc.json", "report.md", "report.json", "errors.png", "cost.png", "tokenizer.json"):
        assert (tmp_path / "a" / f).is_file(), f
    report_md = (tmp_path / "a" / "report.md").read_text()
    assert "![error per stage](errors.png)" in report_md and "![cost vs length](cost.png)" in report_md
    curves = json.loads((tmp_path / "a" / "report.json").read_text())["cost"]
    assert curves["lengths"][-1] == 256 and set(curves["curves"]) == {"sliding-window:window=16,sinks=2,layers=all",
                                                                      "no passes"}
    manifest, runnable, tok = load_artifact(tmp_path / "a")
    from lcc.capture import capture
    from lcc.capture.program import CacheLayout
    from lcc.passes import apply_passes, canonicalize

    program = apply_passes(canonicalize(capture(loaded, 256)), passes)
    prompt = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(4))
    want = generate_ids(program, prompt, 20)
    assert generate_ids(runnable, prompt, 20, cache_layout=CacheLayout(**manifest["cache"])) == want


def test_planned_compile_records_the_plan_for_the_device(tmp_path, tiny):
    """No --pass: the planner's choice for the device profile and quality level is what the artifact applies and
    records.  At 16x the trained length (the prior: smollm2's 128k records) no candidate retrieves, so the default
    `balanced` refuses and names the level that plans; `retrieval` compiles."""
    from lcc.cost.planner import plan, plan_for_compile

    loaded = tiny("llama")
    with pytest.raises(UsageError, match="none meets quality=balanced.*--quality retrieval.*or another --quality"):
        compile_model(loaded, 4096, "torch", None, tmp_path / "b", device="h100", plan_fn=plan_for_compile)
    assert not (tmp_path / "b").exists()
    result = compile_model(loaded, 4096, "torch", None, tmp_path / "a", device="h100", plan_fn=plan_for_compile,
                           quality="retrieval")
    m = result.manifest
    assert m["plan"]["source"] == "planner" and m["plan"]["device"] == "h100" and m["plan"]["quality"] == "retrieval"
    assert m["plan"]["passes"] == plan(loaded, 4096, "h100", quality="retrieval").passes
    assert [c["stage"] for c in m["checks"]][3:] == [str(parse_pass(p)) for p in m["plan"]["passes"]]
    assert set(result.report["stage_seconds"]) == {"plan", "check", "capture", "lower", "check lowered", "report"}
    cost = result.report["cost"]
    assert cost["device"] == "h100" and cost["lengths"] == [1024, 2048, 4096]
    mem = [e["memory"] for e in next(iter(cost["curves"].values()))]
    assert mem == sorted(mem) and mem[0] < mem[-1]  # the cache grows with the length


def test_cost_curves_are_the_evaluation_of_every_entry(tmp_path, tiny):
    """The report's curves walk only the entries an evaluation reads; the figures are those of the whole program."""
    from lcc.capture import capture
    from lcc.compile import ENTRIES, cost_curves
    from lcc.cost import load_profile, program_cost
    from lcc.passes import canonicalize

    program = canonicalize(capture(tiny("llama"), 2048, entries=ENTRIES))
    curves = cost_curves(program, program, [], 2048, "h100", tmp_path / "cost.png")
    profile = load_profile("h100")
    whole = program_cost(program, profile.kind)
    want = [whole.evaluate(n, profile) for n in curves["lengths"]]
    assert curves["curves"]["no passes"] == [{"memory": e.memory, "prefill_time": e.prefill_time} for e in want]


def test_same_inputs_give_byte_identical_manifest(tmp_path, tiny):
    loaded = tiny("llama")
    for name in ("a", "b"):
        compile_model(loaded, 128, "torch", [parse_pass("flash")], tmp_path / name)
    assert (tmp_path / "a" / "lcc.json").read_bytes() == (tmp_path / "b" / "lcc.json").read_bytes()


def test_existing_output_is_not_overwritten_without_force(tmp_path, tiny):
    compile_model(tiny("llama"), 128, "torch", [], tmp_path / "a")
    (tmp_path / "a" / "keep").write_text("x")
    with pytest.raises(UsageError, match="--force"):
        compile_model(tiny("llama"), 128, "torch", [], tmp_path / "a")
    assert (tmp_path / "a" / "keep").read_text() == "x"
    compile_model(tiny("llama"), 128, "torch", [], tmp_path / "a", force=True)
    assert not (tmp_path / "a" / "keep").exists() and (tmp_path / "a" / "lcc.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary or old copy left beside it


def test_a_failed_compile_leaves_nothing_behind(tmp_path, tiny, monkeypatch):
    import lcc.backends.torch_export as te

    def broken(*a, **k):
        raise RuntimeError("lowering failed")

    monkeypatch.setattr(te.BACKEND, "lower", broken)
    with pytest.raises(RuntimeError):
        compile_model(tiny("llama"), 128, "torch", [], tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_a_lowered_artifact_whose_logits_moved_fails_its_check(tmp_path, tiny, monkeypatch):
    """The lowered check reads the check stage's logits of the same passes, and the program it was lowered
    from only where those disagree: a lowering that moves every logit by 0.01 is caught either way."""
    import lcc.backends.torch_export as te

    load = te.BACKEND.load

    def shift(entry):
        def run(*args):
            logits, *rest = entry(*args)
            return (logits + 0.01, *rest)
        return run

    def shifted(*a, **k):
        runnable = load(*a, **k)
        runnable.entries = {name: shift(entry) for name, entry in runnable.entries.items()}
        return runnable

    loaded = tiny("llama")
    good = compile_model(loaded, 128, "torch", [parse_pass("flash")], tmp_path / "a").report["lowered"]
    assert good["ok"] and good["max_abs"] <= good["limit"] < 0.01
    monkeypatch.setattr(te.BACKEND, "load", shifted)
    bad = compile_model(loaded, 128, "torch", [parse_pass("flash")], tmp_path / "b").report["lowered"]
    assert not bad["ok"] and bad["max_abs"] == pytest.approx(0.01, abs=good["limit"])


def _captured(loaded, passes, capacity=64):
    from lcc.capture import capture
    from lcc.capture.program import generate_code
    from lcc.passes import apply_passes, canonicalize

    base = canonicalize(capture(loaded, capacity, entries=("prefill", "decode", "prefill_logits")))
    return generate_code(apply_passes(base, [parse_pass(p) for p in passes]))


def _same_outputs(runnable, program):
    """Every entry of ``runnable`` gives ``program``'s outputs bit for bit (the program is the oracle)."""
    ids = torch.randint(0, program.spec.vocab, (1, 12), generator=torch.Generator().manual_seed(1))
    calls = {"prefill": (ids,), "prefill_logits": (ids,), "decode": (ids[:, :1], torch.tensor(12))}
    with torch.no_grad():
        for name, args in calls.items():
            got, want = runnable.entries[name](*args, *program.cache.empty()), \
                program.entries[name](*args, *program.cache.empty())
            assert all(torch.equal(g, w) for g, w in zip(got, want)), name


def test_the_torch_backend_lowers_rewritten_graphs_without_exporting_them_again(tmp_path, tiny, monkeypatch):
    """The captured graphs a pass rewrote (here a cache layout of its own and flash attention) are lifted into
    exported programs, not traced again, and the artifact runs them as the program does."""
    from lcc.backends.torch_export import BACKEND

    program = _captured(tiny("qwen2"), ["kv-quant", "flash"])

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.export, "export", no_export)
    lowered = BACKEND.lower(program, tmp_path, entries=("prefill", "decode", "prefill_logits"))
    assert lowered.notes == []
    _same_outputs(BACKEND.load(tmp_path), program)


def test_a_graph_that_cannot_be_lifted_is_exported_again_and_noted(tmp_path, tiny):
    """A graph without its capture's ranges goes through torch.export as before; the JSON of either way is torch's
    own serialisation (the serializer's canonical-form self-test, whose result it drops, is skipped)."""
    from torch._export.serde.serialize import serialize

    from lcc.backends.torch_export import BACKEND, exported_program, serialize_json
    from lcc.capture.export import RANGES

    program = _captured(tiny("llama"), ["flash"])
    del program.entries["decode"].meta[RANGES]
    lowered = BACKEND.lower(program, tmp_path, entries=("prefill", "decode", "prefill_logits"))
    assert len(lowered.notes) == 1 and lowered.notes[0].startswith("decode: exported again (ValueError")
    _same_outputs(BACKEND.load(tmp_path), program)
    ep, why = exported_program(program, "prefill")
    assert why is None
    try:
        want = serialize(ep, serialize_state_dict=False, serialize_constants=False,
                         serialize_example_inputs=False).exported_program
    except TypeError:  # torch 2.11 (the lent GPUs'): no such flags, the JSON is the same
        want = serialize(ep).exported_program
    assert serialize_json(ep) == want


def test_cli_compile_then_run(tmp_path):
    def lcc(*args):
        return subprocess.run([sys.executable, "-m", "lcc", *args], capture_output=True, text=True, timeout=600)

    r = lcc("compile", "tiny-qwen3", "--target-len", "256", "--pass", "flash", "--out", str(tmp_path / "q"),
            "--no-cache")  # a compile, not a hit from an earlier run: its progress is what is checked
    assert r.returncode == 0, r.stderr
    for stage in ("check", "capture", "lower", "check lowered", "report"):  # a progress bar per stage
        assert any(line.split()[:len(stage.split())] == stage.split() for line in r.stderr.splitlines()), stage
    assert json.loads((tmp_path / "q" / "lcc.json").read_text())["backend"] == "torch"
    r = lcc("run", str(tmp_path / "q"), "--prompt", "hello world", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    r = lcc("compile", "tiny-qwen3", "--target-len", "256", "--backend", "cuda-magic")
    assert r.returncode == 2 and "unknown backend 'cuda-magic'" in r.stderr
    r = lcc("compile", "tiny-qwen3", "--target-len", "256", "--profile", "tpu")
    assert r.returncode == 2 and "unknown profile 'tpu'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = lcc("run", str(tmp_path), "--prompt", "x y")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["onnx", "tvm"])
def test_lcc_json_is_byte_identical_for_the_same_inputs_on_native_backends(tmp_path, tiny, backend):
    """Timings go to report.json, generated names (TVM libraries) come from what is built."""
    from lcc.backends import get_backend

    try:
        get_backend(backend)
    except UsageError as e:
        pytest.skip(str(e))
    for name in ("a", "b"):
        compile_model(tiny("llama"), 128, backend, [], tmp_path / name)
    assert (tmp_path / "a" / "lcc.json").read_bytes() == (tmp_path / "b" / "lcc.json").read_bytes()
    assert json.loads((tmp_path / "a" / "report.json").read_text())["timings"]
