"""The last-K perplexity protocol (bojone/rerope's eval_loss.py): the same target tokens at every length,
and the loss transformers' model gives them with L tokens of context."""

import math

import pytest
import torch

from lcc.eval import eval_ppl
from lcc.eval.ppl import tail_windows

TEXT = "".join(f"Verse {i}: and the light shineth in darkness; and the darkness comprehended it not. "
               for i in range(40))


def test_tail_windows_score_the_same_final_tokens_at_every_length():
    ids = list(range(20_000))
    for count in (1, 3):
        short, long = tail_windows(ids, 4096, 4096, count), tail_windows(ids, 8192, 4096, count)
        for i, (a, b) in enumerate(zip(short, long)):
            end = len(ids) - i * 4096
            assert a.targets == b.targets == ids[end - 4096:end]
            assert b.inputs == ids[end - 8193:end - 1] and a.inputs == b.inputs[-4096:]
            assert a.start == 0 and b.start == 4096  # the prediction at input position p is of token p + 1
    (below,) = tail_windows(ids, 1024, 4096, 1)  # below K: all L predictions, the targets' suffix
    assert below.targets == ids[-1024:] and below.inputs == ids[-1025:-1]


def test_tail_windows_refuse_a_text_too_short():
    from lcc.errors import UsageError

    with pytest.raises(UsageError, match="need 8193"):
        tail_windows(list(range(8000)), 8192, 4096, 1)


def test_last_k_loss_is_the_same_targets_through_every_length_and_equals_transformers(tiny, monkeypatch):
    """The program's loss on the final K tokens given L inputs equals HF's cross-entropy of the last K logits
    of the text's last L tokens (bojone's eval_loss.py written with transformers), and both lengths score the
    same token ids."""
    import lcc.eval.ppl as ppl

    loaded, k = tiny("llama"), 128
    ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    scored, real = [], ppl.scored_nll
    monkeypatch.setattr(ppl, "scored_nll", lambda program, w: scored.append(w.targets) or real(program, w))
    results = eval_ppl(loaded, [], [192, 320], TEXT, windows=1, last=k)
    assert scored[0] == scored[1] == ids[-k:]
    for result, n in zip(results, (192, 320)):
        x = torch.tensor([ids[-(n + 1):]])
        with torch.no_grad():
            logits = loaded.model(input_ids=x[:, :-1]).logits[0, -k:]
        want = float(torch.nn.functional.cross_entropy(logits.double(), x[0, -k:]))
        assert result.metrics["loss"] == pytest.approx(want, abs=1e-4)
        assert result.metrics["ppl"] == pytest.approx(math.exp(want), rel=1e-4)
        assert result.metrics["tokens"] == k and result.metrics["protocol"] == f"last-{k}"


def test_the_default_protocol_is_named_first_window(tiny):
    (result,) = eval_ppl(tiny("llama"), [], [128], TEXT, windows=2)
    assert result.metrics["protocol"] == "first-window" and result.metrics["tokens"] == 2 * 127
