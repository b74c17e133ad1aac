"""Passkey prompts, perplexity against transformers' own loss, and passkey retrieval on the real model."""

import math

import pytest
import torch

from lcc.eval import eval_passkey, eval_ppl
from lcc.eval.passkey import answer_matches, build_prompt


def test_passkey_prompt_has_the_exact_length_and_the_key_at_its_depth(tiny):
    from lcc.eval.passkey import QUESTION, TASK

    tok = tiny("llama").tokenizer
    for depth in (0.0, 0.5, 1.0):
        p = build_prompt(tok, 600, depth, seed=3)
        assert len(p.ids) == 600
        text = tok.decode(p.ids)
        assert text.count(p.key) == 2 and text.startswith(TASK) and text.endswith(QUESTION)
        line = text.index(" The pass key is")
        filler_start, filler_end = len(TASK) + 1, text.rindex(" " + QUESTION)
        line_len = len(f" The pass key is {p.key}. Remember it. {p.key} is the pass key. ")
        where = (line - filler_start) / (filler_end - filler_start - line_len)
        assert abs(where - depth) <= 25 / (filler_end - filler_start)  # within one filler sentence
    assert build_prompt(tok, 600, 0.5, seed=3).key == build_prompt(tok, 600, 0.9, seed=3).key  # seeded


def test_answer_parsing():
    assert answer_matches(" 71432. Remember", "71432")
    assert not answer_matches(" 71431", "71432") and not answer_matches(" the key", "71432")


def test_perplexity_equals_transformers_loss(tiny):
    """exp(mean NLL) through the program equals exp(HF's own causal-LM loss) on the same windows."""
    loaded = tiny("qwen2")
    text = "The quick brown fox jumps over the lazy dog. " * 40
    (result,) = eval_ppl(loaded, [], [128], text, windows=3)
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    losses = []
    with torch.no_grad():
        for w in range(3):
            x = torch.tensor([ids[w * 128:(w + 1) * 128]])
            losses.append(float(loaded.model(input_ids=x, labels=x).loss))
    assert result.metrics["ppl"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-4)
    assert result.metrics["tokens"] == 3 * 127


@pytest.mark.slow
def test_smollm2_finds_the_passkey_within_its_trained_length(smollm2):
    (result,) = eval_passkey(smollm2, [], [1024], trials=2, depths=(0.2, 0.8))
    assert result.metrics["accuracy"] == 1.0


@pytest.mark.slow
def test_smollm2_loses_the_passkey_with_a_tiny_window(smollm2):
    """A 64-token window cannot see a key placed 900 tokens back: the eval measures the rewrite."""
    (result,) = eval_passkey(smollm2, ["sliding-window:window=64,sinks=4"], [1024], trials=2, depths=(0.1,))
    assert result.metrics["accuracy"] == 0.0


def _cli_json(capsys, *args) -> dict:
    import json

    from lcc.cli import main

    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_an_artifact_evaluates_at_its_capacity_as_the_in_process_program_does(tmp_path, tiny, capsys, backend):
    """`lcc eval ARTIFACT` at the compiled length (capacity exactly L) gives the figures of `lcc eval MODEL`
    with the same passes: passkey prompts are L - ANSWER_TOKENS long, perplexity uses prefill_logits."""
    from lcc.compile import compile_model
    from lcc.eval import load_artifact_program
    from lcc.eval.passkey import ANSWER_TOKENS, prompt_length, run_trial
    from lcc.eval import prepare
    from lcc.passes import parse_pass

    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    loaded, passes, n = tiny("llama"), ["rope-scaling:method=ntk,factor=2"], 256
    compile_model(loaded, n, backend, [parse_pass(p) for p in passes], tmp_path / "a")
    art = load_artifact_program(tmp_path / "a")
    assert art.cache.capacity == n and "prefill_logits" in art.manifest.entries
    weights = tmp_path / "a" / ("weights.safetensors" if backend == "torch" else "weights.bin")
    param_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())  # tied: counted once
    assert weights.stat().st_size <= 1.1 * param_bytes  # the third entry shares the weights
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth. " * 30)
    common = ["--lengths", str(n)]
    ppl_args = ["--task", "ppl", "--windows", "2", "--text", str(text), *common]
    got = _cli_json(capsys, "eval", str(tmp_path / "a"), *ppl_args)["results"][0]
    want = _cli_json(capsys, "eval", "tiny-llama", "--pass", passes[0], *ppl_args)["results"][0]
    assert got["tokens"] == want["tokens"] == 2 * (n - 1)
    assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-5)
    pk_args = ["--task", "passkey", "--trials", "1", *common]
    got = _cli_json(capsys, "eval", str(tmp_path / "a"), *pk_args)["results"][0]
    want = _cli_json(capsys, "eval", "tiny-llama", "--pass", passes[0], *pk_args)["results"][0]
    assert got == want
    program = prepare(loaded, passes, n, ("prefill", "decode"))
    for depth in (0.1, 0.9):  # the same answers, token for token, prompt + answer filling the capacity
        prompt = build_prompt(loaded.tokenizer, prompt_length(n), depth, seed=0)
        assert len(prompt.ids) + ANSWER_TOKENS == n
        assert run_trial(art, art.tokenizer, prompt) == run_trial(program, loaded.tokenizer, prompt)


def test_an_artifact_refuses_passes_and_lengths_past_its_target(tmp_path, tiny, capsys):
    from lcc.cli import main
    from lcc.compile import compile_model

    compile_model(tiny("llama"), 128, "torch", [], tmp_path / "a")
    assert main(["eval", str(tmp_path / "a"), "--task", "passkey", "--lengths", "256"]) == 2
    assert "compiled for 128 tokens" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "a"), "--task", "passkey", "--lengths", "128", "--pass", "flash"]) == 2
    assert "--pass does not apply" in capsys.readouterr().err
