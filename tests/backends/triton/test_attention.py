"""The Triton flash-attention kernel against ``lcc.attention``'s reference, and its block lists."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lcc.ops  # noqa: F401
from lcc.ops.attention import attention_reference
from lcc.ops.masks import dense_mask

MASKS = st.one_of(
    st.just("causal"),
    st.just("full"),
    st.builds("sliding:window={},sinks={}".format, st.integers(1, 80), st.integers(0, 3)),
    st.builds("block-local:block={},blocks={}".format, st.integers(1, 9), st.integers(1, 3)),
    st.builds("strided:stride={},block={}".format, st.integers(1, 7), st.integers(1, 4)),
    st.builds("fixed:stride={},c={},block={}".format, st.integers(1, 5), st.integers(0, 3), st.integers(1, 3)),
    st.builds(lambda r, m, lv, g: f"dilated:segment={r * m},rate={r},levels={lv},growth={g}",
              st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 2)),
    st.builds("global-local:globals={},window={},every={}".format, st.integers(0, 3), st.integers(1, 9),
              st.integers(0, 11)),
)


def flash(q, k, v, kv_len, scale, mask, **kw):
    from lcc.backends.triton.attention import flash_attention

    return flash_attention(q, k, v, kv_len, scale, mask, block_m=16, block_n=16, **kw)


def make_qkv(device, b, hkv, g, sq, sk, d, dv=None, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    v = torch.randn(b, hkv, sk, dv or d, generator=gen)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


# Pinned cases every run (hypothesis draws the rest): each kernel family (dense, sliding/sinks, each block-sparse
# pattern) with GQA ratio 3 or 4 and a ragged tail, windows longer than the sequence, zero sinks / zero globals,
# and per-batch key lengths that differ.
@settings(max_examples=12, deadline=None)
@given(mask=MASKS, sq=st.integers(1, 40), extra=st.integers(0, 24), pad=st.integers(0, 5), b=st.integers(1, 2),
       hkv=st.integers(1, 2), g=st.sampled_from([1, 3, 4]), per_batch=st.booleans(), seed=st.integers(0, 99))
@example(mask="causal", sq=19, extra=6, pad=3, b=2, hkv=2, g=3, per_batch=True, seed=1)
@example(mask="full", sq=7, extra=0, pad=2, b=1, hkv=2, g=1, per_batch=False, seed=2)
@example(mask="sliding:window=80,sinks=0", sq=13, extra=10, pad=2, b=2, hkv=1, g=3, per_batch=True, seed=3)
@example(mask="sliding:window=5,sinks=0", sq=21, extra=3, pad=1, b=1, hkv=2, g=4, per_batch=False, seed=4)
@example(mask="sliding:window=7,sinks=2", sq=33, extra=0, pad=3, b=2, hkv=1, g=3, per_batch=True, seed=5)
@example(mask="block-local:block=4,blocks=2", sq=18, extra=5, pad=1, b=2, hkv=1, g=4, per_batch=True, seed=6)
@example(mask="strided:stride=3,block=2", sq=17, extra=5, pad=4, b=2, hkv=1, g=3, per_batch=True, seed=7)
@example(mask="fixed:stride=3,c=1,block=2", sq=23, extra=2, pad=1, b=1, hkv=2, g=3, per_batch=False, seed=8)
@example(mask="dilated:segment=6,rate=2,levels=2,growth=2", sq=25, extra=4, pad=3, b=2, hkv=1, g=3, per_batch=True,
         seed=9)
@example(mask="global-local:globals=0,window=60,every=0", sq=11, extra=9, pad=2, b=2, hkv=1, g=3, per_batch=True,
         seed=10)
@example(mask="global-local:globals=2,window=4,every=5", sq=29, extra=1, pad=2, b=1, hkv=1, g=4, per_batch=False,
         seed=11)
def test_flash_matches_reference_on_ragged_shapes(device, mask, sq, extra, pad, b, hkv, g, per_batch, seed):
    sk = sq + extra + pad
    q, k, v = make_qkv(device, b, hkv, g, sq, sk, 16, seed=seed)
    if per_batch:  # batch 0 uses the whole cache, batch 1 stops pad keys short: per-batch block lists
        kv_len = torch.tensor([sk, sq + extra][:b], device=device)
    else:
        kv_len = torch.tensor(sq + extra, device=device) if pad else None
    got = flash(q, k, v, kv_len, 0.4, mask)
    torch.testing.assert_close(got.cpu(), attention_reference(q, k, v, kv_len, 0.4, mask).cpu(), atol=2e-5, rtol=2e-5)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(mask=MASKS, sq=st.integers(1, 70), extra=st.integers(0, 70), pad=st.integers(0, 9), b=st.integers(1, 2),
       hkv=st.integers(1, 2), g=st.sampled_from([1, 3, 4]), d=st.sampled_from([16, 32]), seed=st.integers(0, 99))
def test_flash_matches_reference_many_shapes(device, mask, sq, extra, pad, b, hkv, g, d, seed):
    sk = sq + extra + pad
    q, k, v = make_qkv(device, b, hkv, g, sq, sk, d, seed=seed)
    kv_len = torch.tensor([sq + extra] * b, device=device)
    got = flash(q, k, v, kv_len, d**-0.5, mask)
    torch.testing.assert_close(got.cpu(), attention_reference(q, k, v, kv_len, d**-0.5, mask).cpu(),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_flash_head_dims(device, d):
    q, k, v = make_qkv(device, 1, 1, 2, 19, 23, d)
    mask = "sliding:window=9,sinks=1"
    torch.testing.assert_close(flash(q, k, v, None, d**-0.5, mask).cpu(),
                               attention_reference(q, k, v, None, d**-0.5, mask).cpu(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_flash_half_precision_accumulates_in_fp32(device, dtype, tol):
    q, k, v = make_qkv(device, 2, 2, 3, 21, 30, 64, dtype=dtype)
    kv_len = torch.tensor([30, 25], device=device)
    got = flash(q, k, v, kv_len, 0.125, "strided:stride=4")
    assert got.dtype == dtype
    ref = attention_reference(q.float(), k.float(), v.float(), kv_len, 0.125, "strided:stride=4")
    torch.testing.assert_close(got.float().cpu(), ref.cpu(), atol=tol, rtol=tol)


def test_flash_value_dim_differs_from_head_dim(device):
    q, k, v = make_qkv(device, 1, 2, 2, 17, 17, 32, dv=24)
    torch.testing.assert_close(flash(q, k, v, None, 0.2, "causal").cpu(),
                               attention_reference(q, k, v, None, 0.2, "causal").cpu(), atol=2e-5, rtol=2e-5)


def test_rows_that_keep_no_key_are_zero(device):
    """LongNet levels with rate 2 skip odd queries entirely; the reference gives them 0, so must the kernel."""
    q, k, v = make_qkv(device, 1, 1, 1, 20, 20, 16)
    mask = "dilated:segment=8,rate=2,levels=1,growth=2"
    got = flash(q, k, v, None, 0.3, mask)
    assert torch.all(got[0, 0, 1::2] == 0)
    torch.testing.assert_close(got.cpu(), attention_reference(q, k, v, None, 0.3, mask).cpu(), atol=2e-5, rtol=2e-5)
    q, k, v = make_qkv(device, 2, 1, 1, 1, 20, 16)  # one query at an odd position: an empty block list
    for kv_len in (torch.tensor(20, device=device), torch.tensor([20, 19], device=device)):
        got = flash(q, k, v, kv_len, 0.3, mask)
        torch.testing.assert_close(got.cpu(), attention_reference(q, k, v, kv_len, 0.3, mask).cpu(),
                                   atol=2e-5, rtol=2e-5)


def test_kv_len_outside_bounds_is_an_error(device):
    q, k, v = make_qkv(device, 1, 1, 1, 8, 8, 16)
    with pytest.raises(ValueError):
        flash(q, k, v, torch.tensor(5), 0.3, "causal")


# ---- block skipping: the launcher's key-block lists ----

def visited(mask, q_len, kv_len, bm, bn):
    from lcc.backends.triton.attention import key_blocks

    row_ptr, n_full, cols, _ = key_blocks(mask, q_len, [kv_len], bm, bn)
    return row_ptr, n_full, cols


@pytest.mark.parametrize("mask", ["causal", "sliding:window=200,sinks=4", "strided:stride=8,block=16",
                                  "fixed:stride=4,c=1,block=16", "dilated:segment=64,rate=2,levels=2,growth=2",
                                  "global-local:globals=3,window=50,every=300", "block-local:block=64,blocks=2"])
def test_block_list_is_exactly_the_tiles_with_a_kept_pair(mask):
    bm = bn = 32
    q_len, kv_len = 300, 333
    row_ptr, n_full, cols = visited(mask, q_len, kv_len, bm, bn)
    dense = dense_mask(mask, q_len, kv_len)
    n_m, n_n = -(-q_len // bm), -(-kv_len // bn)
    padded = torch.zeros(n_m * bm, n_n * bn, dtype=torch.bool)
    padded[:q_len, :kv_len] = dense
    tiles = padded.reshape(n_m, bm, n_n, bn).permute(0, 2, 1, 3)
    for m in range(n_m):
        row = cols[row_ptr[m]:row_ptr[m + 1]].tolist()
        assert row == sorted(row[: n_full[m]]) + sorted(row[n_full[m]:])  # full tiles first
        assert sorted(row) == tiles[m].any(-1).any(-1).nonzero().flatten().tolist()
        rows_valid = min(bm, q_len - m * bm)
        for j, n in enumerate(row):
            keys_valid = min(bn, kv_len - n * bn)
            whole = bool(tiles[m, n, :rows_valid, :keys_valid].all()) and keys_valid == bn
            assert whole == (j < n_full[m])


@pytest.mark.parametrize("mask,blocks_per_nnz", [("sliding:window=256,sinks=0", 1.25),
                                                 ("strided:stride=4,block=64", 1.0)])
def test_blocks_visited_are_proportional_to_nonzeros(mask, blocks_per_nnz):
    """Tiles visited x tile area stays within a constant of the kept pairs (+ one diagonal tile per row)."""
    bm = bn = 64
    for n in (1024, 4096):
        _, _, cols = visited(mask, n, n, bm, bn)
        nnz = int(dense_mask(mask, n, n).sum())
        assert nnz <= len(cols) * bm * bn <= blocks_per_nnz * nnz + n * bn


def test_sliding_window_visits_a_band_not_the_triangle():
    n, bm = 4096, 64
    band = len(visited("sliding:window=256,sinks=4", n, n, bm, bm)[2])
    triangle = len(visited("causal", n, n, bm, bm)[2])
    assert band <= (n // bm) * (256 // bm + 2) < 0.25 * triangle


# ---- registration ----

def test_triton_backend_registers_cuda_implementations():
    import lcc.backends.triton as backend
    from lcc.ops import registry

    if not backend.AVAILABLE:
        pytest.skip("triton is not installed")
    assert {("flash", "cuda"), ("decode", "cuda"), ("auto", "cuda")} <= {(i.algo, i.device)
                                                                          for i in registry.get("attention").impls}
    assert registry.lowering("attention", "triton") is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_op_dispatches_to_the_kernel_on_cuda():
    import lcc.backends.triton  # noqa: F401

    q, k, v = make_qkv("cuda", 1, 2, 2, 300, 300, 128, dtype=torch.bfloat16)
    for algo in ("flash", "auto"):
        got = torch.ops.lcc.attention(q, k, v, None, 128**-0.5, "sliding:window=64,sinks=4", algo)
        ref = attention_reference(q, k, v, None, 128**-0.5, "sliding:window=64,sinks=4")
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)
