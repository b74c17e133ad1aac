"""The remapped-position Triton kernels (ReRoPE, Self-Extend, DCA) against ``lcc.rerope_attention``'s reference,
plus AOT builds for sm_80 / sm_90.

Without CUDA the kernels run in Triton's interpreter (this directory's conftest sets
TRITON_INTERPRET=1; so does this module when it is collected first, before triton is imported).
"""

import json
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lcc.ops.attention import attention_reference  # noqa: E402
from lcc.ops.rerope import rerope_reference  # noqa: E402

pytest.importorskip("triton")


def inv_freq_of(rotary_dim, base=10000.0):
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))


def make_qkv(device, b, hq, hkv, sq, sk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(b, hq, sq, d, generator=g), torch.randn(b, hkv, sk, d, generator=g),
           torch.randn(b, hkv, sk, d, generator=g))
    return (t.to(device=device, dtype=dtype) for t in qkv)


def kernel(*args, **kw):
    from lcc.backends.triton.rerope import rerope_flash

    return rerope_flash(*args, **kw)


def check(got, q, k, v, positions, inv_freq, scaling, kv_len, scale, window, leaky, tol=2e-5):
    expected = rerope_reference(q.float().cpu(), k.float().cpu(), v.float().cpu(),
                                None if positions is None else positions.cpu(), inv_freq, scaling,
                                None if kv_len is None else kv_len.cpu(), scale, window, leaky)
    assert got.dtype == q.dtype and got.shape == expected.shape
    torch.testing.assert_close(got.float().cpu(), expected, atol=tol, rtol=tol)


@settings(max_examples=10, deadline=None)
@given(sq=st.integers(2, 70), extra=st.integers(0, 20), window=st.integers(0, 48), leaky=st.sampled_from([0.0, 0.25]),
       scaling=st.sampled_from([1.0, 1.25]), rotary_dim=st.sampled_from([8, 16]), group=st.sampled_from([1, 3]),
       seed=st.integers(0, 99))
def test_prefill_kernel_matches_reference(device, sq, extra, window, leaky, scaling, rotary_dim, group, seed):
    """Block 16 against lengths up to 90: the out-of-window, edge and in-window stages all occur."""
    sk = sq + extra
    q, k, v = make_qkv(device, 2, 2 * group, 2, sq, sk, 16, seed=seed)
    kv_len = torch.tensor([sk, sk - extra // 2], device=device) if extra else None
    inv_freq = inv_freq_of(rotary_dim)
    got = kernel(q, k, v, None, inv_freq, scaling, kv_len, 0.3, window, leaky, block_m=16, block_n=16)
    check(got, q, k, v, None, inv_freq, scaling, kv_len, 0.3, window, leaky)


@settings(max_examples=10, deadline=None)
@given(valid=st.integers(1, 80), pad=st.integers(0, 10), window=st.integers(0, 100),
       leaky=st.sampled_from([0.0, 0.5]), scaling=st.sampled_from([1.0, 1.25]), group=st.sampled_from([1, 4]),
       splits=st.integers(1, 4), seed=st.integers(0, 99))
def test_decode_kernel_matches_reference(device, valid, pad, window, leaky, scaling, group, splits, seed):
    """One query at the end of each sequence's cache; the window's keys are rotated from a per-sequence tail."""
    q, k, v = make_qkv(device, 2, 2 * group, 2, 1, valid + pad, 16, seed=seed)
    kv_len = torch.tensor([valid, valid + pad], device=device)
    inv_freq = inv_freq_of(12)
    got = kernel(q, k, v, None, inv_freq, scaling, kv_len, 0.3, window, leaky, block_n=16, splits=splits)
    check(got, q, k, v, None, inv_freq, scaling, kv_len, 0.3, window, leaky)


@pytest.mark.slow
def test_decode_kernel_at_a_32k_cache_with_the_default_launch(device):
    """smollm2's shapes (9 query heads on 3 KV heads, d 64) at the cache docs/rope.md's 32k passkey decodes
    against (capacity 32840), with the launch the runtime picks: the split-K bounds and the window split at
    positions past 2^15, which the small hypothesis cases never reach."""
    q, k, v = make_qkv(device, 1, 9, 3, 1, 32840, 64, seed=4)
    kv_len = torch.tensor([32775], device=device)
    inv_freq = 1.0 / (100000.0 ** (torch.arange(0, 64, 2).float() / 64))
    got = kernel(q, k, v, None, inv_freq, 1.0, kv_len, 0.125, 2048, 0.0)
    check(got, q, k, v, None, inv_freq, 1.0, kv_len, 0.125, 2048, 0.0, tol=1e-5)


@pytest.mark.parametrize("sq", [1, 6])
def test_explicit_query_positions(device, sq):
    q, k, v = make_qkv(device, 2, 2, 1, sq, 40, 16, seed=4)
    positions = torch.tensor([[30], [12]], device=device) + torch.arange(sq, device=device)
    got = kernel(q, k, v, positions, inv_freq_of(16), 1.0, None, 0.25, 9, 0.0, block_m=16, block_n=16, splits=2)
    check(got, q, k, v, positions, inv_freq_of(16), 1.0, None, 0.25, 9, 0.0)


def test_window_covering_the_sequence_is_rope_then_flash_causal_attention(device):
    from lcc.ops.rope import rope_reference

    q, k, v = make_qkv(device, 1, 4, 2, 50, 50, 16, seed=2)
    inv_freq = inv_freq_of(16)
    pos = torch.arange(50, device=device)[None]
    expected = attention_reference(rope_reference(q, pos, inv_freq), rope_reference(k, pos, inv_freq), v, None,
                                   0.25, "causal")
    got = kernel(q, k, v, None, inv_freq, 1.0, None, 0.25, 50, 0.0, block_m=16, block_n=16)
    torch.testing.assert_close(got.cpu(), expected.cpu(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("sq", [1, 48])
def test_half_precision_head_dim_64(device, dtype, tol, sq):
    q, k, v = make_qkv(device, 1, 4, 2, sq, 48, 64, dtype=dtype, seed=1)
    got = kernel(q, k, v, None, inv_freq_of(64), 1.1, None, 64**-0.5, 20, 0.0, block_m=16, block_n=16, splits=2)
    check(got, q, k, v, None, inv_freq_of(64), 1.1, None, 64**-0.5, 20, 0.0, tol=tol)


def test_kernel_rejects_non_causal_masks_and_the_op_falls_back(device):
    q, k, v = make_qkv(device, 1, 2, 1, 8, 8, 16)
    with pytest.raises(ValueError):
        kernel(q, k, v, None, inv_freq_of(16), 1.0, None, 0.25, 4, 0.0, mask="full")
    from lcc.backends.triton import rerope as _  # noqa: F401  (registers the cuda implementation)
    from lcc.ops import registry

    impl = registry.select("rerope_attention", "auto", "cuda").fn
    torch.testing.assert_close(impl(q, k, v, None, inv_freq_of(16), 1.0, None, 0.25, 4, 0.0, "full").cpu(),
                               rerope_reference(q, k, v, None, inv_freq_of(16), 1.0, None, 0.25, 4, 0.0, "full").cpu())


_AOT = """
import json, sys, time
from lcc.backends.triton import aot, rerope
for v in rerope.aot_variants():
    if v.name.startswith("rerope") and ("scale_k" in v.name) != v.name.startswith("rerope_decode"):
        continue  # each kernel once, both SCALE_K branches
    t0 = time.perf_counter()
    try:
        c = aot.compile_variant(v, int(sys.argv[1]))
        rec = dict(kernel=v.name, ok=True, ptx=len(c.asm["ptx"]), cubin=len(c.asm["cubin"]), shared=c.metadata.shared)
    except Exception as e:
        rec = dict(kernel=v.name, ok=False, error=f"{type(e).__name__}: {e}"[:2000])
    print(json.dumps(dict(rec, arch=int(sys.argv[1]), seconds=round(time.perf_counter() - t0, 1))))
"""


def test_kernels_compile_ahead_of_time_for_sm80_and_sm90():
    """Fresh processes without TRITON_INTERPRET (AOT needs triton compiled), one per architecture, in parallel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    procs = {arch: subprocess.Popen([sys.executable, "-c", _AOT, str(arch)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env) for arch in (80, 90)}
    records = []
    for arch, p in procs.items():
        out, err = p.communicate(timeout=1200)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines, f"sm_{arch}: no output\n{err[-3000:]}"
        records += lines
    failed = [r for r in records if not r["ok"]]
    assert not failed, "\n".join(f"sm_{r['arch']} {r['kernel']}: {r['error']}" for r in failed)
    assert {(r["kernel"].split("[")[0], r["arch"]) for r in records} == {
        (k, a) for k in ("rerope_fwd", "rerope_decode_split", "dca_fwd", "dca_decode_split") for a in (80, 90)}
    assert all(r["ptx"] > 0 and r["cubin"] > 0 for r in records)


# --- Self-Extend (Jin et al. 2024) on the same kernels; DCA (An et al. 2024) on its own pair ---


def check_kind(got, q, k, v, inv_freq, kv_len, window, kind, group, chunk_size=0, tol=2e-5):
    expected = rerope_reference(q.float().cpu(), k.float().cpu(), v.float().cpu(), None, inv_freq, 1.0,
                                None if kv_len is None else kv_len.cpu(), 0.3, window, 0.0, "causal", kind, group,
                                chunk_size)
    assert got.dtype == q.dtype and got.shape == expected.shape
    torch.testing.assert_close(got.float().cpu(), expected, atol=tol, rtol=tol)


@settings(max_examples=8, deadline=None)
@given(sq=st.integers(2, 70), extra=st.integers(0, 20), window=st.integers(0, 48), group=st.integers(1, 5),
       gqa=st.sampled_from([1, 3]), seed=st.integers(0, 99))
def test_self_extend_prefill_kernel_matches_reference(device, sq, extra, window, group, gqa, seed):
    sk = sq + extra
    q, k, v = make_qkv(device, 2, 2 * gqa, 2, sq, sk, 16, seed=seed)
    kv_len = torch.tensor([sk, sk - extra // 2], device=device) if extra else None
    got = kernel(q, k, v, None, inv_freq_of(12), 1.0, kv_len, 0.3, window, 0.0, kind="self-extend", group=group,
                 block_m=16, block_n=16)
    check_kind(got, q, k, v, inv_freq_of(12), kv_len, window, "self-extend", group)


@settings(max_examples=8, deadline=None)
@given(valid=st.integers(1, 80), pad=st.integers(0, 10), window=st.integers(0, 100), group=st.integers(1, 5),
       splits=st.integers(1, 4), seed=st.integers(0, 99))
def test_self_extend_decode_kernel_matches_reference(device, valid, pad, window, group, splits, seed):
    q, k, v = make_qkv(device, 2, 4, 2, 1, valid + pad, 16, seed=seed)
    kv_len = torch.tensor([valid, valid + pad], device=device)
    got = kernel(q, k, v, None, inv_freq_of(16), 1.0, kv_len, 0.3, window, 0.0, kind="self-extend", group=group,
                 block_n=16, splits=splits)
    check_kind(got, q, k, v, inv_freq_of(16), kv_len, window, "self-extend", group)


@settings(max_examples=4, deadline=None)
@given(sq=st.integers(2, 48), extra=st.integers(0, 12), chunk_size=st.integers(2, 24), local=st.integers(0, 23),
       gqa=st.sampled_from([1, 3]), seed=st.integers(0, 99))
@example(sq=48, extra=5, chunk_size=24, local=3, gqa=3, seed=1)  # chunks of 21: keys 0-15 one chunk, 16-31 two
def test_dca_prefill_kernel_matches_reference(device, sq, extra, chunk_size, local, gqa, seed):
    """Chunks of 1 to 24 positions against 16-key tiles: tiles inside one chunk (one product, q selected per row)
    and tiles across chunk boundaries (three, selected per pair), with ragged kv_len."""
    local %= chunk_size  # 0 <= local window < chunk size
    sk = sq + extra
    q, k, v = make_qkv(device, 2, 2 * gqa, 2, sq, sk, 16, seed=seed)
    kv_len = torch.tensor([sk, sk - extra // 2], device=device) if extra else None
    got = kernel(q, k, v, None, inv_freq_of(12), 1.0, kv_len, 0.3, local, 0.0, kind="dca", chunk_size=chunk_size,
                 block_m=16, block_n=16)
    check_kind(got, q, k, v, inv_freq_of(12), kv_len, local, "dca", 1, chunk_size)


@settings(max_examples=4, deadline=None)
@given(valid=st.integers(1, 70), pad=st.integers(0, 10), chunk_size=st.integers(2, 30), local=st.integers(0, 29),
       splits=st.integers(1, 4), seed=st.integers(0, 99))
@example(valid=105, pad=3, chunk_size=30, local=10, splits=2, seed=0)
def test_dca_decode_kernel_matches_reference(device, valid, pad, chunk_size, local, splits, seed):
    """One query at the end of each sequence's cache: its key chunks are intra, successive and inter at once.
    The example's chunks of 20 put keys 80-95 in one successive tile whose query position (104 mod 20 + 20 = 24)
    differs from the inter-chunk one (30)."""
    local %= chunk_size
    q, k, v = make_qkv(device, 2, 4, 2, 1, valid + pad, 16, seed=seed)
    kv_len = torch.tensor([valid, valid + pad], device=device)
    got = kernel(q, k, v, None, inv_freq_of(16), 1.0, kv_len, 0.3, local, 0.0, kind="dca", chunk_size=chunk_size,
                 block_n=16, splits=splits)
    check_kind(got, q, k, v, inv_freq_of(16), kv_len, local, "dca", 1, chunk_size)


@pytest.mark.parametrize("sq", [1, 40])
def test_dca_bf16_head_dim_64_and_the_op_runs_the_kernel(device, sq):
    """The op's cuda implementation takes DCA (no fallback to the chunked path), in bf16 at smollm2's head dim."""
    from lcc.backends.triton import rerope as _  # noqa: F401  (registers the cuda implementation)
    from lcc.ops import registry

    q, k, v = make_qkv(device, 1, 4, 2, sq, 40, 64, dtype=torch.bfloat16, seed=5)
    args = (q, k, v, None, inv_freq_of(64), 1.0, None, 0.3, 2, 0.0, "causal", "dca", 1, 9)
    impl = registry.select("rerope_attention", "auto", "cuda", *args)
    assert impl is not None and impl.source == "lcc.backends.triton.rerope"
    check_kind(impl.fn(*args), q, k, v, inv_freq_of(64), None, 2, "dca", 1, 9, tol=3e-2)
