"""The quantized-cache decode kernel against ``lcc.attention_kvq``'s reference (Triton's interpreter on CPU)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (the conftest does the same)

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lcc.ops.kv_cache import KVQuantFormat, attention_kvq_reference, kv_quant_write  # noqa: E402

pytest.importorskip("triton")

FORMATS = ["int8:group=16,keys=channel,residual=8", "int4:group=16,keys=channel,residual=32",
           "int2:group=8,keys=token,residual=0", "fp8:group=16,keys=channel,residual=4"]


def cache(fmt, n, b=1, hkv=2, d=32, capacity=96, seed=0, device="cpu"):
    """K and V parts of a quantized cache holding n random tokens."""
    f = KVQuantFormat.parse(fmt)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for which in ("k", "v"):
        x = torch.randn(b, hkv, n, d, generator=gen) * (3.0 if which == "k" else 1.0)
        parts = [torch.zeros(s, dtype=getattr(torch, dt)) for _, s, dt in f.part_specs(which, b, hkv, capacity, d)]
        out.append([p.to(device) for p in kv_quant_write(parts, x, None, fmt, which)])
    return out


def decode(q, kp, vp, n, mask, fmt, **kw):
    from lcc.backends.triton.kv_decode import kvq_decode

    return kvq_decode(q, kp, vp, torch.tensor(n, device=q.device), 0.3, mask, fmt, block_n=16, **kw)


@settings(max_examples=10, deadline=None)
@given(fmt=st.sampled_from(FORMATS), n=st.integers(1, 96), b=st.integers(1, 2), g=st.sampled_from([1, 3, 4]),
       mask=st.one_of(st.just("causal"), st.builds("sliding:window={},sinks={}".format, st.integers(1, 60),
                                                     st.integers(0, 4))),
       splits=st.integers(1, 4), seed=st.integers(0, 99))
def test_kernel_matches_reference(device, fmt, n, b, g, mask, splits, seed):
    kp, vp = cache(fmt, n, b=b, seed=seed, device=device)
    q = torch.randn(b, 2 * g, 1, 32, generator=torch.Generator().manual_seed(seed)).to(device)
    got = decode(q, kp, vp, n, mask, fmt, splits=splits)
    want = attention_kvq_reference(q.cpu(), [p.cpu() for p in kp], [p.cpu() for p in vp], torch.tensor(n), 0.3, mask,
                                   fmt)
    torch.testing.assert_close(got.cpu(), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("fmt", [FORMATS[0], FORMATS[1], FORMATS[3]])
@pytest.mark.parametrize("n,splits,mask", [(150, 3, "sliding:window=100,sinks=2"), (30, 3, "causal"),
                                           (200, 0, "causal")])
def test_split_kv_at_the_launch_config_of_head_dim_128(device, fmt, n, splits, mask):
    """The tile and warps a D=128 model gets (``config(128)``), the cache split across programs: 150 tokens put a
    partial chunk last (and a window with sinks cuts the first), 30 leave fewer quantized tokens than one chunk (the other splits get none), 0 takes
    :func:`num_splits`'s count; each split's partial and log-sum-exp merged must equal the reference."""
    from lcc.backends.triton.kv_decode import config, kvq_decode, num_splits

    assert num_splits(2, 256, config(128)["block_n"], torch.device(device)) > 1
    kp, vp = cache(fmt, n, hkv=2, d=128, capacity=256, seed=n, device=device)
    q = torch.randn(1, 8, 1, 128, generator=torch.Generator().manual_seed(n)).to(device)
    got = kvq_decode(q, kp, vp, torch.tensor(n, device=device), 128**-0.5, mask, fmt, splits=splits)
    want = attention_kvq_reference(q.cpu(), [p.cpu() for p in kp], [p.cpu() for p in vp], torch.tensor(n),
                                   128**-0.5, mask, fmt)
    torch.testing.assert_close(got.cpu(), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("native", [True, False])
def test_fp8_decoded_in_software_equals_hardware_conversion(device, native):
    """sm_80 has no e4m3 conversion: the integer-op decoder must give the same values."""
    fmt = "fp8:group=16,keys=token,residual=0"
    kp, vp = cache(fmt, 70, seed=5, device=device)
    q = torch.randn(1, 4, 1, 32, generator=torch.Generator().manual_seed(5)).to(device)
    got = decode(q, kp, vp, 70, "causal", fmt, splits=2, native_fp8=native)
    want = attention_kvq_reference(q.cpu(), [p.cpu() for p in kp], [p.cpu() for p in vp], torch.tensor(70), 0.3,
                                   "causal", fmt)
    torch.testing.assert_close(got.cpu(), want, atol=2e-5, rtol=2e-5)


def test_kernel_is_the_cuda_implementation_and_rejects_prefill(device):
    from lcc.ops import registry
    IMPLEMENTATIONS = {(i.algo, i.device) for i in registry.get("attention_kvq").impls}
    assert ("auto", "cuda") in IMPLEMENTATIONS and registry.lowering("attention_kvq", "triton") is not None
    kp, vp = cache(FORMATS[0], 20, device=device)
    with pytest.raises(ValueError, match="one query"):
        decode(torch.randn(1, 4, 2, 32, device=device), kp, vp, 20, "causal", FORMATS[0])


@pytest.mark.slow
def test_kernel_compiles_for_sm80_and_sm90():
    """Ahead-of-time compilation with no GPU, in a fresh process (this one interprets Triton)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-m", "lcc.backends.triton.kv_decode", "--quick", "80", "90"],
                       capture_output=True, text=True, env=env, timeout=1200)
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert records and all(rec["ok"] for rec in records), r.stdout[-3000:] + r.stderr[-3000:]
    assert {rec["arch"] for rec in records} == {80, 90}
    # local-memory spills made the H200 run slower than bf16: the head-dim-128 tile must keep to registers
    d128 = [rec for rec in records if rec["arch"] == 90 and "d=128" in rec["kernel"] and "stack" in rec]
    assert d128 and all(rec["stack"] == 0 for rec in d128), d128


def reference(q, kp, vp, n, scale, mask, fmt):
    return attention_kvq_reference(q.float().cpu(), [p.cpu() for p in kp], [p.cpu() for p in vp], torch.tensor(n),
                                   scale, mask, fmt)


# Tiles start at multiples of BLOCK_N; with per-channel key statistics a 64-key tile holds 2 (G=32) or 4 (G=16) key
# groups whose scale rows are selected per token, a 16-key tile lies inside a G=32 group, and the windows below start
# mid-tile and mid-group (lo = n - window), chunks end where nq (a multiple of G, not of BLOCK_N) does.
@pytest.mark.parametrize("fmt,block_n", [("int8:group=32,keys=channel,residual=24", 64),
                                         ("int4:group=16,keys=channel,residual=40", 64),
                                         ("int8:group=32,keys=channel,residual=8", 16),
                                         ("int2:group=16,keys=channel,residual=16", 32),
                                         ("fp8:group=32,keys=channel,residual=16", 64),
                                         ("int8:group=16,keys=token,residual=0", 64),
                                         ("fp8:group=32,keys=token,residual=8", 32)])
@pytest.mark.parametrize("d,g", [(64, 3), (128, 4)])
@pytest.mark.parametrize("n,mask,splits", [(211, "causal", 3), (211, "sliding:window=77,sinks=5", 4),
                                           (150, "sliding:window=140,sinks=20", 2), (37, "causal", 0)])
def test_tiles_aligned_to_blocks_across_key_groups(device, fmt, block_n, d, g, n, mask, splits):
    kp, vp = cache(fmt, n, hkv=2, d=d, capacity=224, seed=n + d, device=device)
    q = torch.randn(1, 2 * g, 1, d, generator=torch.Generator().manual_seed(n)).to(device)
    from lcc.backends.triton.kv_decode import kvq_decode

    got = kvq_decode(q, kp, vp, torch.tensor(n, device=device), d**-0.5, mask, fmt, splits=splits, block_n=block_n)
    torch.testing.assert_close(got.cpu(), reference(q, kp, vp, n, d**-0.5, mask, fmt), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("n", [128 + 160 + 45, 500])
def test_ring_wrapped_past_its_end(device, n):
    """A 128-token residual over G=32 keeps a ring of 160 slots; after 333 or 500 tokens the ring's oldest token
    sits mid-ring (slot nq mod 160), so the slots hold tokens out of order across the wrap."""
    fmt = "int8:group=32,keys=channel,residual=128"
    f = KVQuantFormat.parse(fmt)
    assert f.n_quantized(n) % f.ring != 0
    kp, vp = cache(fmt, n, hkv=1, d=64, capacity=512, seed=n, device=device)
    q = torch.randn(1, 3, 1, 64, generator=torch.Generator().manual_seed(n)).to(device)
    from lcc.backends.triton.kv_decode import kvq_decode

    for mask in ("causal", "sliding:window=150,sinks=4"):
        got = kvq_decode(q, kp, vp, torch.tensor(n, device=device), 0.125, mask, fmt, splits=3)
        torch.testing.assert_close(got.cpu(), reference(q, kp, vp, n, 0.125, mask, fmt), atol=2e-5, rtol=2e-5)


HALF_FORMATS = ["int8:group=32,keys=channel,residual=16", "int4:group=16,keys=channel,residual=16",
                "int2:group=16,keys=token,residual=0", "fp8:group=32,keys=token,residual=16",
                "fp8:group=32,keys=channel,residual=16"]


@pytest.mark.parametrize("fmt", HALF_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
def test_half_queries_take_fp16_dots_within_output_rounding(device, fmt, dtype, d):
    """fp16 / bf16 queries run fp16 tensor-core dots over codes decoded exactly to fp16 (scales and zeros in fp16):
    the output must match the fp32 reference to within a few roundings of the output dtype (measured: under one
    unit of the output's last place, 2^-11 / 2^-8 relative)."""
    n = 200
    kp, vp = cache(fmt, n, hkv=2, d=d, capacity=256, seed=1, device=device)
    q = torch.randn(1, 8, 1, d, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    from lcc.backends.triton.kv_decode import kvq_decode

    got = kvq_decode(q, kp, vp, torch.tensor(n, device=device), d**-0.5, "sliding:window=150,sinks=3", fmt, splits=3)
    assert got.dtype == dtype
    want = reference(q, kp, vp, n, d**-0.5, "sliding:window=150,sinks=3", fmt)
    tol = 4e-3 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(got.float().cpu(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("native", [True, False])
def test_fp8_software_decode_on_the_fp16_path(device, native):
    """sm_80's integer-op e4m3 decode leaves each code 2^-8 too small and scales the scale by 2^8: same output."""
    fmt = "fp8:group=16,keys=channel,residual=16"
    kp, vp = cache(fmt, 90, seed=7, device=device)
    q = torch.randn(1, 4, 1, 32, generator=torch.Generator().manual_seed(7)).to(device=device, dtype=torch.float16)
    got = decode(q, kp, vp, 90, "causal", fmt, splits=2, native_fp8=native)
    torch.testing.assert_close(got.float().cpu(), reference(q, kp, vp, 90, 0.3, "causal", fmt), atol=4e-3, rtol=4e-3)


@pytest.mark.parametrize("power", [-40, 0, 40])
def test_bf16_query_of_any_range_fits_the_fp16_dot(device, power):
    """A bf16 query is scaled per row by a power of two before its fp16 cast (and the scores back): q * 2^40 with
    scale * 2^-40 (far past fp16's range) or q * 2^-40 (below its subnormals) gives attention(q, scale)."""
    fmt = "int8:group=16,keys=channel,residual=8"
    kp, vp = cache(fmt, 60, seed=3, device=device)
    q = torch.randn(1, 4, 1, 32, generator=torch.Generator().manual_seed(3)).to(device=device, dtype=torch.bfloat16)
    from lcc.backends.triton.kv_decode import kvq_decode

    got = kvq_decode(q * 2.0**power, kp, vp, torch.tensor(60, device=device), 0.3 * 2.0**-power, "causal", fmt,
                     splits=2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float().cpu(), reference(q, kp, vp, 60, 0.3, "causal", fmt), atol=3e-2, rtol=3e-2)


def test_split_count_leaves_the_ring_to_its_own_split(device):
    """With several splits the quantized tokens go to all but the last, which takes only the fp16 ring: each split's
    partial then merges to the reference whether or not a split is empty (here every count from 1 to 9)."""
    from lcc.backends.triton.kv_decode import num_splits

    assert num_splits(8, 131072, 32, torch.device(device)) >= 3
    fmt = "int8:group=16,keys=channel,residual=16"
    kp, vp = cache(fmt, 96, seed=11, device=device)
    q = torch.randn(1, 4, 1, 32, generator=torch.Generator().manual_seed(11)).to(device)
    want = reference(q, kp, vp, 96, 0.3, "causal", fmt)
    for splits in range(1, 10):
        torch.testing.assert_close(decode(q, kp, vp, 96, "causal", fmt, splits=splits).cpu(), want, atol=2e-5,
                                   rtol=2e-5)
