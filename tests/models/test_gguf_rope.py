"""GGUF RoPE scaling: llama.cpp's ``{arch}.rope.scaling.*`` keys reach ``rope_parameters`` and the capture.

The oracle is llama.cpp's ``convert_hf_to_gguf.py``, which writes an HF ``rope_scaling`` as these keys
(``original_max_position_embeddings`` as ``original_context_length``, ``attention_factor`` as
``attn_factor``, ``beta_fast`` as ``yarn_beta_fast``), and transformers run with those ``rope_parameters``.
"""

import numpy as np
import pytest
import torch

from lcc.errors import UsageError
from lcc.models import load_model


def _permute(w, n_head):
    """llama.cpp's q/k permutation for its rotary layout (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path, model, scaling: dict | None, rope_freqs=False):
    """``model`` (a tiny LlamaForCausalLM) as an f32 GGUF with llama.cpp's tensor names and metadata."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(c.vocab_size)
    for key, value in (scaling or {}).items():
        if key == "type":
            w.add_rope_scaling_type(gguf.RopeScalingType(value))
        elif key == "original_context_length":
            w.add_uint32(f"llama.rope.scaling.{key}", value)
        else:
            w.add_float32(f"llama.rope.scaling.{key}", value)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", np.ones(c.head_dim // 2, dtype=np.float32))
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, ours in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if ours == "attn_q":
                t = _permute(t, c.num_attention_heads)
            elif ours == "attn_k":
                t = _permute(t, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


YARN_KEYS = {"type": "yarn", "factor": 4.0, "original_context_length": 64, "attn_factor": 1.25,
             "yarn_beta_fast": 16.0, "yarn_beta_slow": 2.0}
YARN_HF = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
           "attention_factor": 1.25, "beta_fast": 16.0, "beta_slow": 2.0}


@pytest.mark.parametrize("keys,hf", [
    (YARN_KEYS, YARN_HF),
    ({"type": "linear", "factor": 2.0}, {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
])
def test_scaling_keys_become_rope_parameters_and_the_spec_reports_them(keys, hf, tmp_path, tiny):
    f = write_tiny_llama_gguf(tmp_path / "tiny.gguf", tiny("llama").model, keys)
    loaded = load_model(f, weights=False)
    assert loaded.model.config.rope_parameters == hf
    assert loaded.spec.rotary.scaling == {k: v for k, v in hf.items() if k != "rope_theta"}
    # the trained length is what the model was trained or extended to: the context length transformers reads
    assert loaded.spec.trained_len == loaded.model.config.max_position_embeddings == 256


def test_a_scaled_gguf_runs_as_transformers_runs_those_rope_parameters(tmp_path, tiny):
    from transformers import LlamaForCausalLM

    base = tiny("llama").model
    f = write_tiny_llama_gguf(tmp_path / "tiny.gguf", base, YARN_KEYS)
    loaded = load_model(f)
    config = base.config.__class__.from_dict({**base.config.to_dict(), "rope_parameters": YARN_HF})
    oracle = LlamaForCausalLM(config).eval()
    oracle.load_state_dict(base.state_dict())
    ids = torch.arange(3, 83).unsqueeze(0)  # 80 tokens: past the original 64, where yarn changes the result
    torch.testing.assert_close(loaded.model(ids).logits, oracle(ids).logits, rtol=1e-4, atol=1e-4)
    unscaled = base(ids).logits
    assert (loaded.model(ids).logits - unscaled).abs().max() > 1e-3  # the scaling is really applied


def test_an_unscaled_gguf_stays_unscaled(tmp_path, tiny):
    f = write_tiny_llama_gguf(tmp_path / "tiny.gguf", tiny("llama").model, None)
    loaded = load_model(f, weights=False)
    assert loaded.spec.rotary.scaling == {} and loaded.spec.trained_len == 256


@pytest.mark.parametrize("keys,rope_freqs,fragment", [
    ({"type": "longrope", "factor": 2.0}, False, "rope.scaling.type='longrope' is not supported"),
    ({}, True, "rope_freqs.weight"),
])
def test_scaling_lcc_cannot_map_is_refused_not_dropped(keys, rope_freqs, fragment, tmp_path, tiny):
    f = write_tiny_llama_gguf(tmp_path / "tiny.gguf", tiny("llama").model, keys, rope_freqs=rope_freqs)
    with pytest.raises(UsageError, match=fragment) as err:
        load_model(f, weights=False)
    assert "\n" not in str(err.value)
