"""SmolLM2-135M through TVM (llvm): greedy tokens equal transformers' generate."""

import pytest
import torch

pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'apache-tvm>=0.20'")


@pytest.mark.slow
def test_smollm2_greedy_tokens_match_transformers(smollm2, tmp_path):
    from lcc.backends.tvm import TvmProgram, lower
    from lcc.capture.export import capture
    from lcc.diff import hf_eager
    from lcc.passes import canonicalize

    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    program = canonicalize(capture(smollm2, capacity=32))
    lower(program, tmp_path, target="llvm")
    with torch.inference_mode(), hf_eager(smollm2.model) as model:
        want = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0,
                              min_new_tokens=16)[0, ids.shape[1]:].tolist()
    assert TvmProgram(tmp_path).generate(ids, 16) == want
