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
