"""Quantized KV cache: error bounds of quantize/dequantize, the write op's state, and attention over it.

Oracles: the format's own error bound (scale/2 for integer codes, half an e4m3 ulp for fp8),
``attention_reference`` over an independently dequantized cache, and token-by-token decoding
for the evaluation op ``attention_kvq_sim``.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcc.ops import registry
from lcc.ops.attention import attention_reference
from lcc.ops.kv_cache import (
    KVQuantFormat, attention_kvq, attention_kvq_reference, attention_kvq_sim, dequantize, fake_quantize,
    kv_quant_write, pack_codes, quantize, unpack_codes,
)

FORMATS = ["int8:group=16,keys=channel,residual=8", "int4:group=16,keys=channel,residual=0",
           "int2:group=8,keys=token,residual=0", "int4:group=8,keys=channel,residual=24",
           "fp8:group=16,keys=token,residual=4", "fp8:group=8,keys=channel,residual=0"]


def empty_parts(fmt, which, b=1, h=2, c=96, d=32):
    return [torch.zeros(s, dtype=getattr(torch, dt)) for _, s, dt in fmt.part_specs(which, b, h, c, d)]


def group_scales(scale, fmt, axis, shape):
    """The scale each element was quantized with, broadcast to the data's shape."""
    return scale.float().repeat_interleave(fmt.group, dim=-2 if axis == "channel" else -1).expand(shape)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), group=st.sampled_from([4, 8, 16]), axis=st.sampled_from(["channel", "token"]),
       groups=st.integers(1, 4), magnitude=st.sampled_from([1e-3, 1.0, 50.0]), offset=st.floats(-10, 10),
       seed=st.integers(0, 99))
def test_integer_codes_are_within_half_a_scale_of_the_fp16_value(bits, group, axis, groups, magnitude, offset, seed):
    fmt = KVQuantFormat("int", bits, group, "channel", 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, groups * group, 2 * group, generator=gen) * magnitude + offset
    codes, scale, zero = quantize(x, fmt, axis)
    assert codes.dtype == torch.uint8 and codes.shape[-1] == x.shape[-1] * bits // 8
    assert scale.dtype == zero.dtype == torch.float16
    err = (dequantize(codes, scale, zero, fmt, axis) - x.half().float()).abs()
    bound = group_scales(scale, fmt, axis, x.shape) / 2
    assert bool((err <= bound * (1 + 1e-5) + 1e-6 * x.abs().max()).all()), float((err - bound).max())


@settings(max_examples=25, deadline=None)
@given(group=st.sampled_from([4, 16]), axis=st.sampled_from(["channel", "token"]),
       magnitude=st.sampled_from([1e-4, 1.0, 300.0]), seed=st.integers(0, 99))
def test_fp8_codes_are_within_half_an_e4m3_ulp(group, axis, magnitude, seed):
    fmt = KVQuantFormat("fp8", 8, group, "channel", 0)
    x = torch.randn(1, 2, 2 * group, 2 * group, generator=torch.Generator().manual_seed(seed)) * magnitude
    codes, scale, zero = quantize(x, fmt, axis)
    assert codes.dtype == torch.float8_e4m3fn and zero is None
    s = group_scales(scale, fmt, axis, x.shape)
    xh = x.half().float()
    err = (dequantize(codes, scale, zero, fmt, axis) - xh).abs()
    # e4m3: 3 mantissa bits (half ulp = 2^-4 relative); subnormals below 2^-6 are spaced 2^-9
    bound = torch.maximum(xh.abs() * 2**-4, s * 2**-10) * (1 + 1e-5)
    assert bool((err <= bound).all())
    assert bool(((xh.abs() / s) <= 448 * (1 + 1e-3)).all())  # the scale keeps every value in range


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packing_is_lossless_and_in_natural_order(bits):
    codes = torch.randint(0, 1 << bits, (3, 32), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 32 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits), codes)
    if bits == 4:  # element 2i in the low nibble of byte i
        assert int(packed[0, 0]) == int(codes[0, 0]) | int(codes[0, 1]) << 4


def test_format_strings_round_trip_and_bad_formats_fail():
    for f in FORMATS:
        assert str(KVQuantFormat.parse(f)) == f
    for bad in (dict(kind="int", bits=3), dict(kind="fp8", bits=4), dict(keys="head"), dict(group=0)):
        with pytest.raises(ValueError):
            KVQuantFormat(**bad)
    with pytest.raises(ValueError, match="multiple of group"):
        KVQuantFormat(group=48).check_head_dim(64)


def test_tokens_leave_the_ring_a_group_at_a_time():
    f = KVQuantFormat("int", 4, 8, "channel", 16)
    assert [f.n_quantized(n) for n in (0, 16, 23, 24, 31, 32, 40)] == [0, 0, 0, 8, 8, 16, 24]
    assert all(n - f.n_quantized(n) < f.ring for n in range(200))
    t = KVQuantFormat("int", 4, 8, "token", 0)
    assert t.n_quantized(37) == 37 and t.ring == 1


def dequantized_cache(k, fmt, which, n):
    """What a cache holding k[:, :, :n] stands for, built with quantize/dequantize directly."""
    nq = fmt.n_quantized(n)
    out = k[:, :, :n].half().float()
    if nq:
        out[:, :, :nq] = fake_quantize(k[:, :, :nq], fmt, fmt.axis(which))
    return out


def write_incrementally(fmt, x, which, first):
    parts = kv_quant_write(empty_parts(fmt, which, x.shape[0], x.shape[1], 96, x.shape[3]), x[:, :, :first], None,
                           str(fmt), which)
    for t in range(first, x.shape[2]):
        parts = kv_quant_write(parts, x[:, :, t:t + 1], torch.tensor(t), str(fmt), which)
    return parts


@pytest.mark.parametrize("fmt", FORMATS)
def test_prefill_then_decode_writes_equal_one_prefill(fmt):
    """The stored state is a function of the tokens: codes, scales and the live ring slots agree."""
    f = KVQuantFormat.parse(fmt)
    x = torch.randn(1, 2, 61, 32, generator=torch.Generator().manual_seed(1))
    for which in ("k", "v"):
        step = write_incrementally(f, x, which, 5)
        once = kv_quant_write(empty_parts(f, which), x, None, fmt, which)
        n, nq = 61, f.n_quantized(61)
        rows = nq // f.group if f.axis(which) == "channel" else nq
        assert torch.equal(step[0][:, :, :nq].view(torch.uint8), once[0][:, :, :nq].view(torch.uint8))
        for a, b in zip(step[1:-1], once[1:-1]):
            assert torch.equal(a[:, :, :rows], b[:, :, :rows])
        live = torch.arange(nq, n) % f.ring
        assert torch.equal(step[-1][:, :, live], once[-1][:, :, live])
        assert torch.equal(step[-1][:, :, live].float(), x[:, :, nq:n].half().float())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mask", ["causal", "sliding:window=20,sinks=3"])
def test_attention_over_the_quantized_cache_equals_attention_over_its_dequantized_values(fmt, mask):
    f = KVQuantFormat.parse(fmt)
    gen = torch.Generator().manual_seed(2)
    k, v = torch.randn(2, 2, 80, 32, generator=gen), torch.randn(2, 2, 80, 32, generator=gen)
    for n in (3, 47, 80):
        pk = kv_quant_write(empty_parts(f, "k", b=2), k[:, :, :n], None, fmt, "k")
        pv = kv_quant_write(empty_parts(f, "v", b=2), v[:, :, :n], None, fmt, "v")
        for sq in (1, 4):
            q = torch.randn(2, 6, sq, 32, generator=gen)
            got = attention_kvq(q, pk, pv, torch.tensor(n), 0.3, mask, fmt)
            want = attention_reference(q, dequantized_cache(k, f, "k", n), dequantized_cache(v, f, "v", n), None,
                                       0.3, mask)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


def test_the_reference_dequantizes_one_block_at_a_time(monkeypatch):
    import lcc.ops.kv_cache as kvc

    f = KVQuantFormat.parse("int4:group=16,keys=channel,residual=16")
    sizes = []
    real = kvc._dequant_block
    def spy(parts, fmt, which, lo, hi):
        sizes.append(hi - lo)
        return real(parts, fmt, which, lo, hi)

    monkeypatch.setattr(kvc, "_dequant_block", spy)
    k = torch.randn(1, 1, 96, 32)
    pk = kv_quant_write(empty_parts(f, "k", h=1), k, None, str(f), "k")
    pv = kv_quant_write(empty_parts(f, "v", h=1), k, None, str(f), "v")
    whole = attention_kvq_reference(torch.randn(1, 2, 1, 32), pk, pv, torch.tensor(96), 0.2, "causal", f, block=1024)
    blocked = attention_kvq_reference(torch.randn(1, 2, 1, 32), pk, pv, torch.tensor(96), 0.2, "causal", f, block=32)
    assert whole.shape == blocked.shape and max(sizes[2:]) == 32 and sum(sizes[2:]) == 2 * f.n_quantized(96)


@pytest.mark.parametrize("fmt", FORMATS[:3] + FORMATS[4:5])
def test_sim_equals_decoding_token_by_token(fmt):
    """``attention_kvq_sim`` on a prefill = every decode step through the written cache (teacher forcing)."""
    f = KVQuantFormat.parse(fmt)
    gen = torch.Generator().manual_seed(3)
    S = 50
    q, k, v = torch.randn(1, 4, S, 32, generator=gen), torch.randn(1, 2, S, 32, generator=gen), \
        torch.randn(1, 2, S, 32, generator=gen)
    sim = attention_kvq_sim(q, k, v, 0.25, "causal", fmt)
    pk = kv_quant_write(empty_parts(f, "k"), k[:, :, :1], None, fmt, "k")
    pv = kv_quant_write(empty_parts(f, "v"), v[:, :, :1], None, fmt, "v")
    rows = [attention_kvq(q[:, :, :1], pk, pv, torch.tensor(1), 0.25, "causal", fmt)]
    for t in range(1, S):
        pk = kv_quant_write(pk, k[:, :, t:t + 1], torch.tensor(t), fmt, "k")
        pv = kv_quant_write(pv, v[:, :, t:t + 1], torch.tensor(t), fmt, "v")
        rows.append(attention_kvq(q[:, :, t:t + 1], pk, pv, torch.tensor(t + 1), 0.25, "causal", fmt))
    torch.testing.assert_close(sim, torch.cat(rows, 2), atol=2e-6, rtol=2e-6)


def test_ops_are_declared_with_cost():
    ops = registry.ops()
    assert {"attention_kvq", "kv_quant_write", "attention_kvq_sim"} <= set(ops)
    flops, moved, held = ops["attention_kvq"].cost(1, 9, 3, 1, 4096, 64, 64, "causal",
                                                    "int4:group=32,keys=channel,residual=128")
    f = KVQuantFormat.parse("int4:group=32,keys=channel,residual=128")
    assert float(moved) < 4 * 2 * 3 * 4096 * 64 / 4  # far less than an fp32 cache
    assert float(moved) >= 3 * 4096 * f.bytes_per_token(64)


def test_fake_impls_keep_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    f = KVQuantFormat.parse(FORMATS[0])
    with FakeTensorMode():
        pk = [torch.empty(s, dtype=getattr(torch, d)) for _, s, d in f.part_specs("k", 1, 2, 96, 32)]
        out = torch.ops.lcc.kv_quant_write(pk, torch.empty(1, 2, 7, 32), None, FORMATS[0], "k")
        assert [o.shape for o in out] == [p.shape for p in pk]
        a = torch.ops.lcc.attention_kvq(torch.empty(1, 4, 1, 32), pk, pk, None, 0.1, "causal", FORMATS[0])
        assert a.shape == (1, 4, 1, 32)
