"""GGUF architectures: one transformers' GGUF loader does not map is refused by name with the list it maps, before
any work; one it maps goes under the same capability rule as an HF directory (metadata-only files: no tensors)."""

import pytest

from lcc.errors import UsageError
from lcc.models import load_model


def _metadata_only_gguf(path, arch: str):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(16)
    w.add_head_count(2)
    w.add_feed_forward_length(32)
    w.add_layer_norm_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b"])
    w.add_token_types([1, 1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_an_architecture_transformers_does_not_map_is_refused_by_name_with_the_mapped_list(tmp_path):
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    with pytest.raises(UsageError) as e:
        load_model(str(_metadata_only_gguf(tmp_path / "m.gguf", "rwkv6")))
    message = str(e.value)
    assert message.startswith("GGUF architecture 'rwkv6' is not supported: transformers' GGUF loader maps ")
    listed = message.rsplit("maps ", 1)[1].split(", ")
    assert set(listed) == set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    assert {"gemma2", "gemma3", "llama", "qwen3"} <= set(listed)


def test_a_mapped_architecture_goes_under_the_capability_rule(tmp_path):
    """BLOOM is mapped, but its attention predates transformers' AttentionInterface: one line saying so."""
    with pytest.raises(UsageError) as e:
        load_model(str(_metadata_only_gguf(tmp_path / "m.gguf", "bloom")))
    assert len(str(e.value).splitlines()) == 1
    assert "bloom is not supported: its attention (BloomForCausalLM) does not go through transformers' " \
           "AttentionInterface" in str(e.value)
