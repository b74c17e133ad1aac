"""The hf backend: an HF directory that transformers loads and runs as the lcc program, or a one-line refusal.

The oracle is transformers itself: the exported directory loaded with ``AutoModelForCausalLM`` (no lcc
code on that path) must give the logits of the lcc program it came from (capture + passes), within
DESIGN.md's fp32 rule; the expected ``rope_parameters`` are written here from transformers' documented
fields and, for static NTK, from bloc97's base change b' = b s^(R/(R-2)).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from lcc.backends import get_backend
from lcc.capture import capture
from lcc.capture.program import CacheLayout
from lcc.compile import ENTRIES, compile_model, load_artifact
from lcc.diff import diff, logit_limit
from lcc.errors import UsageError
from lcc.models import load_model
from lcc.passes import apply_passes, canonicalize, parse_pass
from lcc.runtime import generate_ids

CAPACITY = 512  # twice tiny-llama's trained length (256)
THETA = 10000.0


def _program(name: str):
    loaded = load_model(name)
    return loaded, canonicalize(capture(loaded, capacity=CAPACITY, entries=ENTRIES))


@pytest.fixture(scope="module")
def llama():
    return _program("tiny-llama")


@pytest.fixture(scope="module")
def qwen2():
    return _program("tiny-qwen2")


def _export(program, out, dtype="float32"):
    lowered = get_backend("hf").lower(program, out, dtype=dtype)
    return lowered, json.loads((out / "config.json").read_text())


def _ids(n: int, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n))


def _assert_same_logits(program, out, n: int) -> None:
    """transformers' own forward of the export against the program's prefill_logits on ``n`` random tokens."""
    ids = _ids(n)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True).eval()
    with torch.inference_mode():
        got = model(ids).logits
        want = program.entries["prefill_logits"](ids, *program.cache.empty())[0]
    assert float((got - want).abs().max()) <= logit_limit(want)


ROPE_CASES = {
    "rope-scaling:method=linear,factor=2": (
        {"rope_type": "linear", "factor": 2.0, "rope_theta": THETA}, CAPACITY),
    "rope-scaling:method=dynamic-ntk,factor=4": (  # transformers measures dynamic lengths against max_position
        {"rope_type": "dynamic", "factor": 4.0, "rope_theta": THETA}, 256),
    "rope-scaling:method=yarn,factor=4": (
        {"rope_type": "yarn", "factor": 4.0, "rope_theta": THETA, "original_max_position_embeddings": 256,
         "beta_fast": 32.0, "beta_slow": 1.0}, CAPACITY),
    "rope-scaling:method=llama3,factor=8": (
        {"rope_type": "llama3", "factor": 8.0, "rope_theta": THETA, "original_max_position_embeddings": 256,
         "low_freq_factor": 1.0, "high_freq_factor": 4.0}, CAPACITY),
    "rope-scaling:method=ntk,factor=4": (  # rotary dim R = head dim 16
        {"rope_type": "default", "rope_theta": THETA * 4.0 ** (16 / 14)}, CAPACITY),
}


@pytest.mark.parametrize("spec", list(ROPE_CASES))
def test_transformers_runs_the_export_as_the_program_with_its_rope_method(llama, spec, tmp_path):
    loaded, base = llama
    program = apply_passes(base, [spec, "flash"])
    _, config = _export(program, tmp_path)
    rope, max_position = ROPE_CASES[spec]
    assert config["rope_parameters"] == pytest.approx(rope) and config["rope_parameters"].keys() == rope.keys()
    assert config["max_position_embeddings"] == max_position and config["dtype"] == "float32"
    _assert_same_logits(program, tmp_path, 400)  # past the trained length, where the methods differ


def test_weights_are_stored_once_under_hf_names_in_the_chosen_dtype(llama, tmp_path):
    loaded, _ = llama
    program = canonicalize(capture(load_model("tiny-llama", dtype="bfloat16"), capacity=64, entries=("prefill",)))
    lowered, config = _export(program, tmp_path, dtype="bfloat16")
    state = loaded.model.state_dict()  # the fp32 HF module: the file holds its weights rounded to bf16
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(state)
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), state[name].to(torch.bfloat16))
    assert config["dtype"] == "bfloat16"
    weight_bytes = sum(t.numel() * 2 for t in state.values())
    assert sum((tmp_path / f).stat().st_size for f in lowered.files) <= 1.1 * weight_bytes


def test_a_sliding_window_without_sinks_becomes_qwen2_layer_types(qwen2, tmp_path):
    loaded, base = qwen2
    _, config = _export(base, tmp_path / "base")  # tiny-qwen2: layer 0 full, layers 1-2 slide over 24 keys
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    assert config["sliding_window"] == 24 and config["use_sliding_window"] is True
    program = apply_passes(base, ["sliding-window:window=16,sinks=0"])
    _, config = _export(program, tmp_path / "narrow")
    assert config["layer_types"] == ["sliding_attention"] * 3 and config["sliding_window"] == 16
    _assert_same_logits(program, tmp_path / "narrow", 100)


def test_the_loaded_export_decodes_as_the_program_past_its_window(qwen2, tmp_path):
    """lcc's entry points over the export (the explicit cache in and out) against the program, step by step."""
    loaded, base = qwen2
    program = apply_passes(base, ["sliding-window:window=16,sinks=0"])
    _export(program, tmp_path)
    runnable = get_backend("hf").load(tmp_path)
    ids = _ids(40)
    with torch.inference_mode():
        want, *want_cache = program.entries["prefill"](ids, *program.cache.empty())
        got, *got_cache = runnable.entries["prefill"](ids, *program.cache.empty())
        assert float((got - want).abs().max()) <= logit_limit(want)
        for step in range(3):
            token, position = want[:, -1].argmax(-1).view(1, 1), torch.tensor(40 + step)
            want, *want_cache = program.entries["decode"](token, position, *want_cache)
            got, *got_cache = runnable.entries["decode"](token, position, *got_cache)
            assert float((got - want).abs().max()) <= logit_limit(want)


def test_lcc_diff_runs_the_export_as_its_lowered_stage(llama):
    loaded, _ = llama
    reports = diff(loaded, ["rope-scaling:method=linear,factor=2"], 300, backend="hf")
    lowered = reports[-1]
    assert lowered.name == "lowered:hf" and lowered.against == "previous stage"
    assert lowered.vs_prev_max_abs <= lowered.limit and lowered.ok


@pytest.mark.parametrize("spec", ["rerope:window=64", "kv-quant", "sliding-window:window=64,sinks=4",
                                  "rope-scaling:method=power,factor=2"])
def test_a_plan_hf_cannot_express_is_refused_naming_the_pass(llama, spec, tmp_path):
    loaded, base = llama
    program = apply_passes(base, [spec])
    with pytest.raises(UsageError, match=f"cannot express pass '{program.passes[-1]}'"):
        _export(program, tmp_path)


@pytest.mark.parametrize("family", ["mistral", "qwen3", "gpt-neox", "phi3"])
def test_every_family_exports_under_its_own_weight_names(family, tmp_path):
    loaded = load_model(f"tiny-{family}")
    base = canonicalize(capture(loaded, capacity=64, entries=("prefill", "prefill_logits")))
    program = apply_passes(base, ["rope-scaling:method=yarn,factor=2"])
    if family == "phi3":  # transformers' Phi3Config takes rope_type default or longrope only
        with pytest.raises(UsageError, match="cannot express pass 'rope-scaling:method=yarn.*' for phi3"):
            _export(program, tmp_path)
        program = base
    _export(program, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(loaded.model.state_dict())
    _assert_same_logits(program, tmp_path, 48)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_gemma_exports_with_its_soft_caps_windows_and_per_layer_type_rope(family, tmp_path):
    """Gemma 2's soft-capping and Gemma 3's local / global layers (rope_parameters per layer type) round-trip; a
    rope-scaling pass on per-layer-type RoPE is refused in one line rather than written as one flat entry."""
    loaded = load_model(f"tiny-{family}")
    base = canonicalize(capture(loaded, capacity=64, entries=("prefill", "prefill_logits")))
    config = _export(base, tmp_path)[1]
    source = loaded.model.config
    assert config["sliding_window"] == source.sliding_window and config["layer_types"] == source.layer_types
    if family == "gemma3":
        assert config["rope_parameters"] == source.rope_parameters
        with pytest.raises(UsageError, match="cannot express pass 'rope-scaling.*per-layer-type"):
            _export(apply_passes(base, ["rope-scaling:method=linear,factor=2"]), tmp_path / "scaled")
    _assert_same_logits(base, tmp_path, 48)


def test_a_sliding_window_on_llama_is_refused(llama, tmp_path):
    loaded, base = llama
    with pytest.raises(UsageError, match="sliding-window.*llama: its transformers config has no sliding window"):
        _export(apply_passes(base, ["sliding-window:window=64,sinks=0"]), tmp_path)


def test_compile_writes_an_hf_directory_that_lcc_runs(llama, tmp_path):
    loaded, base = llama
    passes = [parse_pass("rope-scaling:method=yarn,factor=4")]
    result = compile_model(loaded, CAPACITY, "hf", passes, tmp_path / "out")
    out = result.out
    assert result.report["lowered"]["ok"] and result.manifest.backend == "hf"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "lcc.json"):
        assert (out / name).is_file()
    assert (out / "model.safetensors").stat().st_mode & 0o044 == (out / "config.json").stat().st_mode & 0o044
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == loaded.model.config.eos_token_id
    manifest, runnable, tokenizer = load_artifact(out)
    program = apply_passes(base, passes)
    prompt = _ids(300)
    assert generate_ids(runnable, prompt, 8, cache_layout=CacheLayout.from_dict(manifest.cache)) == \
        generate_ids(program, prompt, 8)


def test_loading_an_export_never_reads_a_model_type_lcc_does_not_know(llama, tmp_path):
    loaded, base = llama
    _export(base, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoModelForCausalLM": "evil.Model"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UsageError):
        get_backend("hf").load(tmp_path)


@pytest.mark.slow
def test_smollm2_exports_dynamic_ntk_with_its_tied_embedding(tmp_path):
    """original=64 puts a short input past the scaled length, where dynamic NTK changes the frequencies."""
    loaded = load_model("smollm2-135m")
    base = canonicalize(capture(loaded, capacity=256, entries=ENTRIES))
    program = apply_passes(base, ["rope-scaling:method=dynamic-ntk,factor=4,original=64"])
    lowered, config = _export(program, tmp_path)
    assert config["rope_parameters"] == {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 100000.0}
    assert config["max_position_embeddings"] == 64 and config["tie_word_embeddings"] is True
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(loaded.model.state_dict()) - {"lm_head.weight"}
    weight_bytes = sum(p.numel() * 4 for p in loaded.model.parameters())  # parameters() counts a tied one once
    assert sum((tmp_path / f).stat().st_size for f in lowered.files) <= 1.1 * weight_bytes
    _assert_same_logits(program, tmp_path, 160)
