"""SmolLM2-135M through ``lcc compile --backend onnx``: greedy tokens equal transformers' ``generate``.

Checked three ways on one artifact: ``lcc run DIR`` (the command line), the artifact's runner
(token ids), and onnxruntime-genai loading the directory itself.
"""

import pytest
import torch

from lcc.runtime import eos_ids

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
NEW = 16


@pytest.fixture(scope="module")
def artifact(smollm2, tmp_path_factory):
    """(compile result, prompt ids, transformers' greedy tokens); what ``lcc compile --backend onnx`` writes."""
    from lcc.compile import compile_model

    out = tmp_path_factory.mktemp("onnx-smollm2") / "artifact"
    result = compile_model(smollm2, 64, "onnx", [], out)
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = smollm2.model.generate(ids, max_new_tokens=NEW, do_sample=False)[0, ids.shape[1]:].tolist()
    return result, ids, want


def test_lowered_prefill_matches_program(artifact):
    result, _, _ = artifact
    lowered = result.report["lowered"]
    assert lowered["ok"] and lowered["max_abs"] <= lowered["limit"] and lowered["top1"] == 1.0
    assert result.manifest["lowering"]["fallbacks"] == []


def test_artifact_runner_tokens_match_transformers(artifact, smollm2):
    from lcc.compile import load_artifact
    from lcc.runtime import generate_ids

    result, ids, want = artifact
    _, runnable, _ = load_artifact(result.out)
    assert generate_ids(runnable, ids, NEW, stop=eos_ids(smollm2.model)) == want


def test_lcc_run_prints_transformers_text(artifact, smollm2):
    from tests.test_cli import lcc

    result, _, want = artifact
    r = lcc("run", str(result.out), "--prompt", PROMPT, "--max-new-tokens", str(NEW))
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == smollm2.tokenizer.decode(want, skip_special_tokens=True)


def test_genai_loads_the_artifact_and_matches_transformers(artifact):
    from tests.backends.onnx.test_genai import genai_generate

    result, ids, want = artifact
    assert genai_generate(result.out, ids.numpy(), NEW) == want


def test_weights_are_stored_once(artifact, smollm2):
    """weights.bin holds each parameter once: the tied embedding / lm_head matrix is not duplicated by the
    exporter's transposed copy, and the packed QKV replaces (not adds to) the three projections."""
    result, _, _ = artifact
    params = sum(p.numel() * p.element_size() for p in smollm2.model.parameters())  # tied weights counted once
    stored = (result.out / "weights.bin").stat().st_size
    assert params <= stored <= params * 1.01
