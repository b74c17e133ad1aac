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
