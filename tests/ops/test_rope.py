"""lcc.rope against transformers' own rotary embedding and apply_rotary_pos_emb."""

import pytest
import torch

import lcc.ops  # noqa: F401


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rope_matches_transformers(partial):
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding, apply_rotary_pos_emb

    config = Phi3Config(hidden_size=64, num_attention_heads=4, partial_rotary_factor=partial,
                        max_position_embeddings=128)
    rotary = Phi3RotaryEmbedding(config)
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 4, 9, 16)
    positions = torch.arange(9).unsqueeze(0).expand(2, 9) + torch.tensor([[0], [5]])
    cos, sin = rotary(q, positions)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    q_lcc = torch.ops.lcc.rope(q, positions, rotary.inv_freq, rotary.attention_scaling, "")
    k_lcc = torch.ops.lcc.rope(k, positions, rotary.inv_freq, rotary.attention_scaling, "")
    assert torch.equal(q_lcc, q_hf) and torch.equal(k_lcc, k_hf)
    if partial < 1:
        assert torch.equal(q_lcc[..., 8:], q[..., 8:])  # channels past the rotary dim pass through


def test_rope_preserves_relative_position_dot_products():
    """RoPE's defining property (RoFormer eq. 16): <R_m q, R_n k> depends only on m - n."""
    torch.manual_seed(1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def dot(m, n):
        qm = torch.ops.lcc.rope(q, torch.tensor([[m]]), inv_freq, 1.0, "")
        kn = torch.ops.lcc.rope(k, torch.tensor([[n]]), inv_freq, 1.0, "")
        return float((qm * kn).sum())

    assert dot(7, 3) == pytest.approx(dot(104, 100), abs=1e-4)


def test_repeated_calls_reuse_no_stale_angles():
    """The CPU body reuses the last call's cos / sin only for equal inputs: a positions tensor changed in place,
    other frequencies, another scaling or dtype each give transformers' rotation for the new inputs."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64))
    torch.manual_seed(2)
    x = torch.randn(1, 4, 3, 16)
    positions = torch.tensor([[4, 5, 6]])

    def expected(pos, inv_freq=rotary.inv_freq, scaling=1.0, dtype=torch.float32):
        freqs = pos[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)
        return apply_rotary_pos_emb(x.to(dtype), x.to(dtype), cos, sin)[0]

    first = torch.ops.lcc.rope(x, positions, rotary.inv_freq, 1.0, "")
    assert torch.equal(first, expected(positions))
    assert torch.equal(torch.ops.lcc.rope(x, positions, rotary.inv_freq, 1.0, ""), first)
    positions += 7  # in place: same tensor object, new values
    assert torch.equal(torch.ops.lcc.rope(x, positions, rotary.inv_freq, 1.0, ""), expected(positions))
    assert not torch.equal(expected(positions), first)
    other = rotary.inv_freq / 4
    assert torch.equal(torch.ops.lcc.rope(x, positions, other, 1.0, ""), expected(positions, other))
    assert torch.equal(torch.ops.lcc.rope(x, positions, other, 1.5, ""), expected(positions, other, 1.5))
    half = torch.ops.lcc.rope(x.bfloat16(), positions, other, 1.5, "")
    assert half.dtype == torch.bfloat16 and torch.equal(half, expected(positions, other, 1.5, torch.bfloat16))
