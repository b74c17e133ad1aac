"""lcc.linear_attention: the reference against the recurrent form, the papers' formulas and softmax."""

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcc.ops import registry
from lcc.ops.linear_attention import (features, linear_attention, linear_attention_cost, linear_attention_recurrent,
                                      linear_attention_reference, orthogonal_random_features)


@settings(max_examples=15, deadline=None)
@given(fmap=st.sampled_from(["elu", "performer:features=12,seed=1"]), s=st.integers(1, 20), hkv=st.integers(1, 2),
       g=st.sampled_from([1, 3, 4]), seed=st.integers(0, 99))
def test_quadratic_and_recurrent_forms_agree(fmap, s, hkv, g, seed):
    """Katharopoulos et al. 2020: the masked kernel matrix (eq. 4) equals the RNN with state S_i, z_i (eq. 18-20)."""
    torch.manual_seed(seed)
    q, k, v = torch.randn(2, hkv * g, s, 8), torch.randn(2, hkv, s, 8), torch.randn(2, hkv, s, 6)
    torch.testing.assert_close(linear_attention_reference(q, k, v, fmap), linear_attention_recurrent(q, k, v, fmap),
                               atol=1e-5, rtol=1e-5)


def test_elu_feature_map_written_out():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 3)
    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # noqa: E731
    out = torch.stack([sum(phi(q[0, 0, i]) @ phi(k[0, 0, j]) * v[0, 0, j] for j in range(i + 1))
                       / (sum(phi(q[0, 0, i]) @ phi(k[0, 0, j]) for j in range(i + 1)) + 1e-6) for i in range(5)])
    torch.testing.assert_close(torch.ops.lcc.linear_attention(q, k, v, "elu")[0, 0], out)


def test_performer_approximates_softmax_attention():
    """FAVOR+ (Choromanski et al. 2021): with many random features the output nears causal softmax attention."""
    torch.manual_seed(0)
    q, k, v = (0.5 * torch.randn(1, 1, 32, 16) for _ in range(3))
    scores = (q @ k.transpose(-1, -2)) / 4 + torch.full((32, 32), float("-inf")).triu(1)
    exact = torch.softmax(scores, -1) @ v
    errors = [(linear_attention_reference(q, k, v, f"performer:features={m},seed=0") - exact).abs().mean()
              for m in (16, 1024)]
    assert errors[1] < 0.05 and errors[1] < errors[0]


def test_random_features_are_reproducible_and_orthogonal_in_blocks():
    a, b = orthogonal_random_features(48, 16, 3), orthogonal_random_features(48, 16, 3)
    assert torch.equal(a, b) and not torch.equal(a, orthogonal_random_features(48, 16, 4))
    block = a[:16] / a[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    x = torch.randn(1, 1, 3, 16)
    assert torch.equal(features(x, "performer:features=48,seed=3", None, True), features(x, "performer", a, True))


def test_fake_exports_with_symbolic_length():
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.lcc.linear_attention(q, k, v, "elu")

    s = torch.export.Dim("s", min=2, max=64)
    x = torch.randn(1, 2, 8, 4)
    ep = torch.export.export(M(), (x, x, x), dynamic_shapes=({2: s}, {2: s}, {2: s}))
    y = torch.randn(1, 2, 20, 4)
    torch.testing.assert_close(ep.module()(y, y, y), M()(y, y, y))


def test_cost_is_linear_in_length_and_declared():
    S = sympy.Symbol("S", positive=True)
    flops, moved, held = linear_attention_cost(1, 32, 8, S, 128, 128, "performer:features=256")
    assert sympy.degree(sympy.expand(flops), S) == 1 and sympy.degree(sympy.expand(moved), S) == 1
    assert not sympy.sympify(held).free_symbols
    assert registry.get("linear_attention").op is torch.ops.lcc.linear_attention.default
    assert linear_attention is not None


def test_unknown_feature_map_is_rejected():
    x = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError):
        linear_attention_reference(x, x, x, "relu")
