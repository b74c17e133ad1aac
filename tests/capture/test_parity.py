"""Captured and canonical programs against HF eager (fp32): logits within DESIGN.md's rule
(1e-4 + 1e-5 x max|logits|, :func:`lcc.diff.logit_limit`), same greedy tokens."""

import pytest
import torch

from lcc.capture.export import capture
from lcc.diff import LOGIT_TOL, hf_eager, hf_outputs, logit_limit, program_outputs
from lcc.passes import canonicalize
from lcc.passes.graph import ATTENTION, ROPE, lcc_nodes
from lcc.runtime import generate_ids
from tests.conftest import TINY_FAMILIES


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_canonical_program_matches_hf_eager(family, tiny):
    loaded = tiny(family)
    program = canonicalize(capture(loaded, capacity=64, entries=("prefill_full",)))
    gm = program.entries["prefill_full"]
    assert len(lcc_nodes(gm, ATTENTION)) == loaded.spec.layers
    assert len(lcc_nodes(gm, ROPE)) == 2 * loaded.spec.layers
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(1))  # longer than the windows
    ref, got = hf_outputs(loaded, ids), program_outputs(program, ids)
    assert float((ref.logits - got.logits).abs().max()) <= logit_limit(ref.logits)
    assert float((ref.hidden - got.hidden).abs().max()) <= LOGIT_TOL * max(1.0, float(ref.hidden.abs().max()))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prefill_decode_generate_transformers_tokens(family, tiny):
    loaded = tiny(family)
    program = canonicalize(capture(loaded, capacity=64))
    prompt = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    with hf_eager(loaded.model) as model:
        want = model.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None,
                              pad_token_id=0, min_new_tokens=30)[0, 20:].tolist()
    assert generate_ids(program, prompt, 30) == want


def test_one_token_prompt_generates_transformers_tokens(tiny):
    """A one-token prompt runs as a decode step at position 0 (prefill is captured for S >= 2)."""
    loaded = tiny("llama")
    program = canonicalize(capture(loaded, capacity=64))
    prompt = torch.tensor([[17]])
    with hf_eager(loaded.model) as model:
        want = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0, min_new_tokens=12)[0, 1:].tolist()
    assert generate_ids(program, prompt, 12) == want


def test_program_runs_at_lengths_other_than_the_traced_one(tiny):
    loaded = tiny("llama")
    program = capture(loaded, capacity=128, entries=("prefill",))
    for n in (2, 7, 128):
        ids = torch.randint(0, 256, (1, n))
        logits = program.entries["prefill"](ids, *program.cache.empty())[0]
        with torch.no_grad():
            ref = loaded.model(ids).logits[:, -1:]
        assert float((logits - ref).abs().max()) <= logit_limit(ref)


@pytest.mark.slow
def test_smollm2_canonical_program_at_512_tokens(smollm2):
    from lcc.data import sample_ids

    program = canonicalize(capture(smollm2, capacity=512, entries=("prefill_full",)))
    ids = torch.tensor([sample_ids(smollm2.tokenizer, 512, smollm2.spec.vocab)])
    ref, got = hf_outputs(smollm2, ids), program_outputs(program, ids)
    assert float((ref.logits - got.logits).abs().max()) <= logit_limit(ref.logits)
    assert torch.equal(ref.logits.argmax(-1), got.logits.argmax(-1))
