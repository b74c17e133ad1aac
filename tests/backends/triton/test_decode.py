"""The split-K flash-decoding kernel against ``lcc.attention``'s reference (one query at the end of the cache)."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lcc.ops.attention import attention_reference

MASKS = st.one_of(st.just("causal"),
                  st.builds("sliding:window={},sinks={}".format, st.integers(1, 120), st.integers(0, 4)))


def decode(q, k, v, kv_len, scale, mask, **kw):
    from lcc.backends.triton.decode import flash_decode

    return flash_decode(q, k, v, kv_len, scale, mask, block_n=16, **kw)


def make_qkv(device, b, hkv, g, sk, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, s, d, generator=gen) for h, s in ((hkv * g, 1), (hkv, sk), (hkv, sk)))
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


@settings(max_examples=15, deadline=None)
@given(mask=MASKS, valid=st.integers(1, 90), pad=st.integers(0, 20), b=st.integers(1, 2), hkv=st.integers(1, 2),
       g=st.sampled_from([1, 3, 4]), splits=st.integers(1, 5), per_batch=st.booleans(), seed=st.integers(0, 99))
# pinned every run: GQA 3 and 4 with ragged, per-batch cache lengths; a window longer than the cache; zero sinks
@example(mask="causal", valid=29, pad=11, b=2, hkv=1, g=3, splits=4, per_batch=True, seed=1)
@example(mask="causal", valid=17, pad=0, b=1, hkv=2, g=1, splits=2, per_batch=False, seed=2)
@example(mask="causal", valid=9, pad=4, b=1, hkv=2, g=4, splits=3, per_batch=False, seed=6)  # fewer keys than a tile
@example(mask="sliding:window=120,sinks=0", valid=37, pad=5, b=2, hkv=2, g=3, splits=3, per_batch=True, seed=3)
@example(mask="sliding:window=9,sinks=0", valid=50, pad=7, b=1, hkv=1, g=4, splits=2, per_batch=False, seed=4)
@example(mask="sliding:window=11,sinks=3", valid=45, pad=9, b=2, hkv=1, g=3, splits=5, per_batch=True, seed=5)
def test_decode_matches_reference(device, mask, valid, pad, b, hkv, g, splits, per_batch, seed):
    q, k, v = make_qkv(device, b, hkv, g, valid + pad, 16, seed=seed)
    if per_batch:
        kv_len = torch.tensor([valid, valid + pad][:b], device=device)
    else:
        kv_len = torch.tensor(valid, device=device) if pad else None
    got = decode(q, k, v, kv_len, 0.3, mask, splits=splits)
    torch.testing.assert_close(got.cpu(), attention_reference(q, k, v, kv_len, 0.3, mask).cpu(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("mask", ["causal", "sliding:window=40,sinks=3", "sliding:window=1000,sinks=0"])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_decode_half_precision_and_head_dim_128(device, mask, dtype, tol):
    q, k, v = make_qkv(device, 1, 2, 4, 200, 128, dtype=dtype)
    got = decode(q, k, v, torch.tensor(150, device=device), 128**-0.5, mask, splits=3)
    ref = attention_reference(q.float(), k.float(), v.float(), torch.tensor(150), 128**-0.5, mask)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float().cpu(), ref.cpu(), atol=tol, rtol=tol)


@pytest.mark.parametrize("d", [64, 256])
def test_decode_head_dims(device, d):
    q, k, v = make_qkv(device, 2, 1, 3, 70, d)
    kv_len = torch.tensor([70, 53], device=device)
    for mask in ("causal", "sliding:window=20,sinks=2"):
        got = decode(q, k, v, kv_len, d**-0.5, mask, splits=3)
        torch.testing.assert_close(got.cpu(), attention_reference(q, k, v, kv_len, d**-0.5, mask).cpu(),
                                   atol=2e-5, rtol=2e-5)


def test_splits_that_get_no_keys_do_not_change_the_result(device):
    """More splits than key blocks: the empty ones carry lse = -inf and weigh nothing in the merge."""
    q, k, v = make_qkv(device, 1, 1, 3, 20, 16)
    ref = attention_reference(q, k, v, None, 0.25, "sliding:window=5,sinks=1")
    for splits in (1, 7, 16):
        got = decode(q, k, v, None, 0.25, "sliding:window=5,sinks=1", splits=splits)
        torch.testing.assert_close(got.cpu(), ref.cpu(), atol=2e-5, rtol=2e-5)


def test_decode_rejects_prefill_and_sparse_masks(device):
    q, k, v = make_qkv(device, 1, 1, 1, 20, 16)
    with pytest.raises(ValueError):
        decode(q.expand(1, 1, 2, 16), k, v, None, 0.25, "causal")
    with pytest.raises(ValueError):
        decode(q, k, v, None, 0.25, "strided:stride=4")
