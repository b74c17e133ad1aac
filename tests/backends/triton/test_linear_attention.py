"""The chunked Triton linear-attention kernel against ``lcc.linear_attention``'s reference."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lcc.ops.linear_attention import linear_attention_reference, orthogonal_random_features


def kernel(*args, **kw):
    from lcc.backends.triton.linear_attention import linear_attention

    return linear_attention(*args, **kw)


def make_qkv(device, b, hkv, g, s, d, dv, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, s, d, generator=gen)
    k = torch.randn(b, hkv, s, d, generator=gen)
    v = torch.randn(b, hkv, s, dv, generator=gen)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


@settings(max_examples=10, deadline=None)
@given(fmap=st.sampled_from(["elu", "performer:features=16,seed=3", "performer:features=40,seed=0"]),
       s=st.integers(1, 70), b=st.integers(1, 2), hkv=st.integers(1, 2), g=st.sampled_from([1, 3, 4]),
       dv=st.sampled_from([8, 16, 24]), chunk=st.sampled_from([16, 32]), seed=st.integers(0, 99))
# pinned every run: GQA 3 and 4 with lengths that leave a ragged last chunk, and a single token
@example(fmap="elu", s=37, b=2, hkv=2, g=3, dv=24, chunk=16, seed=1)
@example(fmap="performer:features=16,seed=3", s=45, b=1, hkv=1, g=4, dv=8, chunk=32, seed=2)
@example(fmap="performer:features=40,seed=0", s=1, b=1, hkv=1, g=1, dv=16, chunk=16, seed=3)
def test_chunked_kernel_matches_reference(device, fmap, s, b, hkv, g, dv, chunk, seed):
    q, k, v = make_qkv(device, b, hkv, g, s, 16, dv, seed=seed)
    got = kernel(q, k, v, fmap, chunk=chunk)
    torch.testing.assert_close(got.cpu(), linear_attention_reference(q, k, v, fmap).cpu(), atol=1e-4, rtol=1e-4)


def test_explicit_projection_is_used(device):
    q, k, v = make_qkv(device, 1, 1, 2, 33, 16, 16)
    w = orthogonal_random_features(24, 16, seed=7).to(device)
    got = kernel(q, k, v, "performer", w, chunk=16)
    ref = linear_attention_reference(q, k, v, "performer", w)
    torch.testing.assert_close(got.cpu(), ref.cpu(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_head_dims(device, d):
    q, k, v = make_qkv(device, 1, 1, 3, 41, d, d)
    got = kernel(q, k, v, "elu")  # the launcher's own chunk and tile sizes for this head dim
    torch.testing.assert_close(got.cpu(), linear_attention_reference(q, k, v, "elu").cpu(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_inputs(device, dtype, tol):
    q, k, v = make_qkv(device, 1, 2, 2, 50, 64, 64, dtype=dtype)
    got = kernel(q, k, v, "elu", chunk=16)
    assert got.dtype == dtype
    ref = linear_attention_reference(q.float(), k.float(), v.float(), "elu")
    torch.testing.assert_close(got.float().cpu(), ref.cpu(), atol=tol, rtol=tol)
