"""onnxruntime-genai loads the artifact folder and generates the program's greedy tokens."""

import json

import numpy as np
import pytest
import torch

from lcc.runtime import generate_ids

og = pytest.importorskip("onnxruntime_genai")


def genai_generate(out_dir, prompt_ids, max_new_tokens):
    """Greedy tokens from onnxruntime-genai (the search options come from genai_config.json)."""
    model = og.Model(str(out_dir))
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    new = []
    while not generator.is_done() and len(new) < max_new_tokens:
        generator.generate_next_token()
        new.append(int(generator.get_next_tokens()[0]))
    return new


def test_genai_config_is_share_buffer_at_capacity(lowered):
    program, out, _ = lowered("llama")
    config = json.loads((out / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is True
    assert config["search"]["max_length"] == program.cache.capacity
    assert config["model"]["decoder"]["num_key_value_heads"] == program.cache.kv_heads


def test_genai_generates_program_tokens(lowered):
    program, out, _ = lowered("llama")
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    assert genai_generate(out, ids.numpy(), 30) == generate_ids(program, ids, 30)


def test_no_genai_model_for_a_non_standard_cache():
    from lcc.backends.onnx.genai import unsupported
    from lcc.capture.program import CacheLayout, RingCache

    assert unsupported(CacheLayout(1, 64, 2, 2, 16)) is None
    assert unsupported(CacheLayout(1, 64, 2, 2, 16, ring=RingCache(4, 12))) is not None
    assert unsupported(CacheLayout(1, 64, 2, 2, 16, tensors=(("k", (1, 2, 64, 16), "int8"),))) is not None
