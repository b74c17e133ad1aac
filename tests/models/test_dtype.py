"""``load_model(name, dtype=...)``: the module is built in that dtype and the spec (hence the KV cache) says so."""

import pytest
import torch

from lcc.errors import UsageError
from lcc.models import load_model


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_tiny_preset_in_half_precision_is_its_fp32_weights_rounded(dtype, tiny):
    half = load_model("tiny-llama", dtype=dtype)
    full = tiny("llama")
    assert half.spec.dtype == dtype
    assert all(p.dtype == getattr(torch, dtype) for p in half.model.parameters())
    for (name, p), (_, q) in zip(half.model.named_parameters(), full.model.named_parameters()):
        assert torch.equal(p, q.to(p.dtype)), name
    # K and V, 2 layers x 2 heads x 16 dims, 2 bytes each
    assert half.spec.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2
    assert half.weights_hash == full.weights_hash  # the weights' identity, not their rounding


def test_an_hf_directory_loads_in_the_requested_dtype_like_transformers(tmp_path, tiny):
    from transformers import AutoModelForCausalLM

    tiny("qwen3").model.save_pretrained(tmp_path)
    ours = load_model(tmp_path, dtype="bfloat16")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert ours.spec.dtype == "bfloat16"
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(ours.model(ids).logits, theirs(ids).logits)


def test_the_default_stays_fp32(tiny):
    assert tiny("mistral").spec.dtype == "float32"
    assert all(p.dtype == torch.float32 for p in tiny("mistral").model.parameters())


@pytest.mark.parametrize("dtype", ["int8", "float64", "fp8"])
def test_an_unknown_dtype_is_one_usage_error_naming_the_three(dtype):
    with pytest.raises(UsageError) as err:
        load_model("tiny-llama", dtype=dtype)
    assert "float32, float16 or bfloat16" in str(err.value) and "\n" not in str(err.value)
