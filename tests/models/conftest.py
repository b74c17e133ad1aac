"""Fixtures of tests/models: a config-only directory of Llama-3-8B's shapes."""

import pytest

# Meta's Llama-3-8B config.json sizes (the published model card / config)
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                 rope_parameters={"rope_type": "default", "rope_theta": 500000.0})


@pytest.fixture(scope="session")
def llama3_8b_config_dir(tmp_path_factory):
    """A directory holding only config.json (no weights), written by transformers' LlamaConfig."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("llama3-8b-config")
    LlamaConfig(**LLAMA3_8B).save_pretrained(path)
    return path
