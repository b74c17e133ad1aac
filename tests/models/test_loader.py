"""Loading presets, HF directories and GGUF files; the spec read from each; bad input."""

import pytest
import torch

from lcc.errors import UsageError
from lcc.models import load_model
from tests.conftest import TINY_FAMILIES


@pytest.mark.slow
def test_smollm2_spec_is_the_real_model(smollm2):
    s = smollm2.spec
    assert (s.family, s.layers, s.heads, s.kv_heads, s.head_dim) == ("llama", 30, 9, 3, 64)
    assert s.trained_len == 8192 and s.rotary.theta == 100000.0 and s.rotary.rotary_dim == 64
    assert 134_000_000 < s.params < 136_000_000
    # K and V, 30 layers x 3 heads x 64 dims, fp32
    assert s.kv_bytes_per_token() == 2 * 30 * 3 * 64 * 4
    assert smollm2.tokenizer("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_presets_are_seeded_and_of_their_family(family):
    a, b = load_model(f"tiny-{family}"), load_model(f"tiny-{family}")
    assert a.spec.family == family
    assert a.weights_hash == b.weights_hash
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(a.model(ids).logits, b.model(ids).logits)


def test_tiny_family_features_are_visible_in_the_spec(tiny):
    assert tiny("mistral").spec.attention == ("sliding:24",) * 2
    assert tiny("qwen2").spec.attention == ("full", "sliding:24", "sliding:24")
    assert tiny("gpt-neox").spec.rotary.rotary_dim == 4
    assert tiny("phi3").spec.rotary.rotary_dim == 8


def test_hf_directory_round_trip(tmp_path, tiny):
    loaded = tiny("qwen3")
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert again.spec.family == "qwen3"
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(again.model(ids).logits, loaded.model(ids).logits)


def test_a_model_without_rotary_embedding_is_refused_naming_what_is_missing(tmp_path):
    """GPT-2's attention goes through the interface, but its positions are learned: no rotary to take over."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="gpt2 is not supported: no rotary embedding lcc recognises"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("name,message", [
    ("/no/such/path", "neither a preset nor an existing path"),
    ("tiny-gpt2", "unknown preset"),
])
def test_bad_names(name, message):
    with pytest.raises(UsageError, match=message):
        load_model(name)


def test_corrupt_gguf(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF" + b"\x00" * 50)
    with pytest.raises(UsageError, match="not a readable GGUF file"):
        load_model(str(f))


def test_corrupt_safetensors(tmp_path, tiny):
    tiny("llama").model.config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UsageError, match="not a readable safetensors file"):
        load_model(str(tmp_path))


BAD_CONFIGS = {
    "negative heads": ({"num_attention_heads": -4}, "num_attention_heads=-4"),
    "heads not dividing the hidden size": ({"hidden_size": 30, "head_dim": None}, "not a multiple"),
    "odd head dim": ({"head_dim": 7}, "even"),
    "vocab 0": ({"vocab_size": 0}, "vocab_size=0"),
    "a string for the layer count": ({"num_hidden_layers": "two"}, "num_hidden_layers"),
    "kv heads not dividing the heads": ({"num_key_value_heads": 3}, "num_key_value_heads=3"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_config_with_impossible_shapes_is_one_usage_error(case, tiny, tmp_path):
    """Issue 20 finding 6: these configs crashed with a traceback; now one line naming the field."""
    import json

    tiny("llama").model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    change, fragment = BAD_CONFIGS[case]
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    with pytest.raises(UsageError, match="config.json") as err:
        load_model(tmp_path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
