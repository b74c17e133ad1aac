"""Split-K flash decoding over a quantized KV cache (KIVI int8/4/2 or fp8 e4m3), dequantized in registers.

The cache is ``lcc.ops.kv_cache``'s parts: packed codes, fp16 scale (and zero) per group, and
an fp16 ring of the most recent tokens.  Each program takes the query heads that share one
kv head and a chunk of the quantized tokens (with several splits, the last split takes only the
ring); it loads codes, unpacks and scales them in registers (no dequantized copy of the cache
is ever written), runs an online softmax and writes a partial output and its log-sum-exp,
which a second kernel merges (Dao et al. 2023, Flash-Decoding).  Masks: causal, or sliding
window with sinks.

Inner loop (built for bandwidth; NOT yet timed on a GPU, reasoned from bytes and from the sm_90
SASS that ``python -m lcc.backends.triton.kv_decode`` compiles):

- fp16 / bf16 queries run fp16 tensor-core dots with fp32 accumulation.  Integer codes (< 256) and
  e4m3 values are exact in fp16, the cache's scales, zeros and ring are fp16, so tiles are
  dequantized as ``code * scale + zero`` in packed fp16 (HFMA2).  Codes become fp16 without
  int-to-float instructions (a quarter-rate pipe that alone would take ~64 us at 128k int8 on an
  H200): fp16 bits ``0x6400 | c`` are 1024 + c, one ``prmt`` builds two of them (inline PTX; the
  interpreter computes the same bits).  A bf16 query is cast to fp16 after a per-row power-of-two
  scaling (undone on the scores), so any bf16 range fits.  fp32 queries keep fp32 dots (``PREC``):
  the exact path the interpreter tests check to 2e-5; it is not the fast path (it spills).
- Tiles start at multiples of BLOCK_N, so with per-channel key statistics a tile holds whole
  groups: its scales and zeros are BLOCK_N / G rows of [D] (one row for KIVI's G=32 and the
  32-key tile at D=128), loaded once and broadcast down the tile; per-token statistics (values,
  and keys with ``keys=token``) are D / G vectors of [BLOCK_N] broadcast over their G channels.
  The former kernel loaded a scale and a zero per element ([BLOCK_N, D] gathers, 4x the bytes of
  the int8 codes in load instructions).

Bytes per key per kv head at D=128, G=32 (K + V; stats loaded once per tile, as stored):
int8 (keys per channel): 128 + 128 codes + 2*2*128/32 = 16 (K scale, zero) + 2*2*4 = 16 (V) =
288 B, against 512 B for bf16 (ratio 0.5625: at equal GB/s 1.78x lower latency, so the 1.8x target
needs slightly more GB/s than the bf16 kernel reaches); fp8 (keys per token): 256 + 8 + 8 = 272 B
(1.88x); int4: 64 + 64 + 16 + 16 = 160 B.  Instruction budget (sm_90 SASS of the main loop, bf16
queries): ~2100 thread-instructions per key for int8, ~1850 for fp8, against ~1000 for the bf16
kernel; at 128k x 8 kv heads on an H200 (132 SMs, 4 warp-instructions per clock, 1.98 GHz) that
is ~66 / ~59 us of issue against ~76 / ~71 us of DRAM time at 4 TB/s: the kernel is close to
issue-bound, so the target needs the two well overlapped (see :func:`config`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lcc.backends.triton.decode import merge_splits, sm_count, split_program, store_partial
from lcc.backends.triton.interpret import check_device, dot_precision, is_interpreted, launcher
from lcc.backends.triton.online_softmax import LOG2E, softmax_update
from lcc.ops.kv_cache import KVQuantFormat
from lcc.ops.masks import MaskSpec


@triton.jit
def _int_codes(b, HALF: tl.constexpr, ASM: tl.constexpr):
    """Integer codes ``b`` (uint8 values < 256) as exact fp16 (``HALF``) or fp32 values, with no int-to-float
    conversion instruction (those issue at a quarter of the ALU rate and would bound the kernel).

    fp16 with bits ``0x6400 | c`` is 1024 + c exactly (c < 1024), so c = that - 1024; fp32 ``0x4B000000 | c``
    is 2^23 + c.  ``ASM`` (compiled kernels): one ``prmt`` builds two such fp16 from two bytes, the interpreter
    (no inline asm) computes the same bits with integer ops."""
    if HALF:
        if ASM:
            h = tl.inline_asm_elementwise("prmt.b32 $0, $2, 0x64646464, 0x4140; prmt.b32 $1, $2, 0x64646464, 0x4342;",
                                          "=r,=r,r", [b], dtype=tl.float16, is_pure=True, pack=4)
        else:
            h = (b.to(tl.uint16) | 0x6400).to(tl.float16, bitcast=True)
        c = h - 1024.0
    else:
        c = (b.to(tl.uint32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    return c


@triton.jit
def _codes(b, BLOCK_N: tl.constexpr, D: tl.constexpr, PACK: tl.constexpr, FP8: tl.constexpr,
           FP8_NATIVE: tl.constexpr, HALF: tl.constexpr, ASM: tl.constexpr):
    """[BLOCK_N, D] code values of the bytes ``b`` [BLOCK_N, D / PACK], exact in the dot's dtype.

    fp8 without hardware conversion (sm_80): the e4m3 bits moved into an fp16's (sign to bit 15, exponent and
    mantissa to bits 7..13) are the value times 2^-8, subnormals included; :func:`_stat` undoes it in the
    scale."""
    if FP8:
        if FP8_NATIVE:
            c = b.to(tl.float8e4nv, bitcast=True).to(tl.float16 if HALF else tl.float32)
        else:
            c = (((b & 0x80).to(tl.uint16) << 8) | ((b & 0x7F).to(tl.uint16) << 7)).to(tl.float16, bitcast=True)
            if not HALF:
                c = c.to(tl.float32)
    else:
        if PACK == 2:  # element 2i in the low nibble, 2i+1 in the high one
            b = tl.join(b & 15, b >> 4).reshape(BLOCK_N, D)
        elif PACK == 4:  # element 4i+j in bits 2j..2j+1 (join interleaves innermost first)
            b = tl.join(tl.join(b & 3, (b >> 4) & 3), tl.join((b >> 2) & 3, b >> 6)).reshape(BLOCK_N, D)
        c = _int_codes(b, HALF, ASM)
    return c


@triton.jit
def _to_dot(x, HALF: tl.constexpr):
    """x in the dot's dtype: fp16 (``HALF``) or fp32."""
    if HALF:
        y = x.to(tl.float16)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _stat(ptr, mask, HALF: tl.constexpr, FP8: tl.constexpr, FP8_NATIVE: tl.constexpr):
    """Scales or zeros (fp16 in memory) in the dot's dtype; times 2^8 for software-decoded fp8 codes, which
    :func:`_codes` leaves 2^8 too small (exact: a power of two, and an fp8 scale is at most 65504 / 448)."""
    x = _to_dot(tl.load(ptr, mask=mask, other=0.0), HALF)
    if FP8:
        if not FP8_NATIVE:
            x = x * 256.0
    return x


@triton.jit
def _tile(C, S, Z, s0, hi, ok, stride_cn, stride_sn, D: tl.constexpr, G: tl.constexpr, BLOCK_N: tl.constexpr,
          PACK: tl.constexpr, FP8: tl.constexpr, PER_CHANNEL: tl.constexpr, FP8_NATIVE: tl.constexpr,
          HALF: tl.constexpr, ASM: tl.constexpr):
    """Keys or values of quantized tokens s0 .. s0 + BLOCK_N - 1, [BLOCK_N, D] in the dot's dtype (0 where not
    ``ok``; tokens >= ``hi`` are not ``ok``).  ``s0`` is a multiple of BLOCK_N, so with per-channel statistics
    the tile holds BLOCK_N / G whole groups (or lies inside one group): the scales are BLOCK_N / G rows of [D],
    loaded once each and broadcast down the tile; with per-token statistics they are D / G vectors of
    [BLOCK_N], broadcast across their G channels.  Either way no scale is loaded per element."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, D // PACK)
    offs_d = tl.arange(0, D)
    tile = offs_n[:, None] * stride_cn + offs_b[None, :]  # within one tile: small, int32
    b = tl.load(C + tl.cast(s0, tl.int64) * stride_cn + tile, mask=ok[:, None], other=0)
    c = _codes(b, BLOCK_N, D, PACK, FP8, FP8_NATIVE, HALF, ASM)
    if PER_CHANNEL:  # row s0 // G (+ j) of [groups, D]
        first = s0 + offs_d * 0 < hi  # a vector mask: the interpreter takes no scalar one for a vector load
        row = S + tl.cast(s0 // G, tl.int64) * stride_sn + offs_d
        s = tl.broadcast_to(_stat(row, first, HALF, FP8, FP8_NATIVE)[None, :], [BLOCK_N, D])
        if not FP8:
            zrow = Z + tl.cast(s0 // G, tl.int64) * stride_sn + offs_d
            z = tl.broadcast_to(_stat(zrow, first, HALF, False, False)[None, :], [BLOCK_N, D])
        for j in tl.static_range(1, BLOCK_N // G):  # G < BLOCK_N: the tile's later groups
            live = s0 + j * G + offs_d * 0 < hi
            later = (offs_n >= j * G)[:, None]
            s = tl.where(later, _stat(row + j * stride_sn, live, HALF, FP8, FP8_NATIVE)[None, :], s)
            if not FP8:
                z = tl.where(later, _stat(zrow + j * stride_sn, live, HALF, False, False)[None, :], z)
    else:  # column j of [tokens, D / G]
        col = S + tl.cast(s0, tl.int64) * stride_sn + offs_n * stride_sn
        s = tl.broadcast_to(_stat(col, ok, HALF, FP8, FP8_NATIVE)[:, None], [BLOCK_N, D])
        if not FP8:
            zcol = Z + tl.cast(s0, tl.int64) * stride_sn + offs_n * stride_sn
            z = tl.broadcast_to(_stat(zcol, ok, HALF, False, False)[:, None], [BLOCK_N, D])
        for j in tl.static_range(1, D // G):
            later = (offs_d >= j * G)[None, :]
            s = tl.where(later, _stat(col + j, ok, HALF, FP8, FP8_NATIVE)[:, None], s)
            if not FP8:
                z = tl.where(later, _stat(zcol + j, ok, HALF, False, False)[:, None], z)
    if FP8:
        out = c * s
    else:
        out = c * s + z
    return out


@triton.jit
def attend_tile(q, k, v, ok, m_i, l_i, acc, row_scale, PREC: tl.constexpr):
    """One online-softmax update with keys k / values v [BLOCK_N, D] where ``ok``; scores times ``row_scale``."""
    qk = tl.dot(q, tl.trans(k), input_precision=PREC) * row_scale[:, None]
    qk = tl.where(ok[None, :], qk, float("-inf"))
    return softmax_update(qk, v, m_i, l_i, acc, PREC)


@triton.jit
def _dot_query(q, qk_scale, HALF: tl.constexpr):
    """(q in the dot's dtype, per-row score scale).  fp16 dots: each row is scaled by a power of two so its
    largest |element| lies in [2^14, 2^15) (exact, and a bf16 query of any range fits fp16), and the scores
    are scaled back by the inverse power with ``qk_scale``."""
    if HALF:
        amax = tl.max(tl.abs(q), 1)
        ex = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased exponent: amax in [2^(ex-127), 2^(ex-126))
        t = tl.minimum(tl.maximum(268 - ex, 1), 253)  # 2^(t-127) = 2^(14-(ex-127)), kept a normal fp32
        up = (t << 23).to(tl.float32, bitcast=True)
        down = ((254 - t) << 23).to(tl.float32, bitcast=True)
        qd = (q * up[:, None]).to(tl.float16)
        row_scale = qk_scale * down
    else:
        qd = q
        row_scale = tl.full([q.shape[0]], qk_scale, tl.float32)
    return qd, row_scale


@triton.jit
def kvq_split(Q, KC, KS, KZ, KR, VC, VS, VZ, VR, KV_LEN, MID_O, MID_LSE,
              stride_qb, stride_qh, stride_cb, stride_ch, stride_cn, stride_ksb, stride_ksh, stride_ksn,
              stride_vsb, stride_vsh, stride_vsn, stride_rb, stride_rh, stride_rn,
              HKV, GROUP, SPLITS, window, sinks, qk_scale,
              RESIDUAL: tl.constexpr, TOKEN_BLOCK: tl.constexpr, RING: tl.constexpr, SLIDING: tl.constexpr,
              BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
              PACK: tl.constexpr, FP8: tl.constexpr, K_PER_CHANNEL: tl.constexpr, FP8_NATIVE: tl.constexpr,
              PREC: tl.constexpr, HALF: tl.constexpr, ASM: tl.constexpr):
    tl.static_assert(D % PACK == 0)
    tl.static_assert(D % G == 0)
    split, b, hk = split_program(HKV)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    heads = hk * GROUP + offs_g
    q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=offs_g[:, None] < GROUP, other=0.0).to(tl.float32)
    q, row_scale = _dot_query(q, qk_scale, HALF)
    c_off = b.to(tl.int64) * stride_cb + hk.to(tl.int64) * stride_ch  # K and V codes share a layout
    ks_off = b.to(tl.int64) * stride_ksb + hk.to(tl.int64) * stride_ksh
    vs_off = b.to(tl.int64) * stride_vsb + hk.to(tl.int64) * stride_vsh
    r_off = b.to(tl.int64) * stride_rb + hk.to(tl.int64) * stride_rh

    n = tl.load(KV_LEN)
    nq = tl.maximum(n - RESIDUAL, 0) // TOKEN_BLOCK * TOKEN_BLOCK  # tokens [0, nq) quantized, [nq, n) in the ring
    lo = 0
    if SLIDING:  # the query sits at n - 1 and keeps keys >= n - window (plus the sinks)
        lo = tl.maximum(n - window, 0)
    # Tiles start at multiples of BLOCK_N (so they hold whole key groups); with several splits the last one
    # takes only the ring, the others share the quantized tokens [base, nq).
    base = lo // BLOCK_N * BLOCK_N
    quant_splits = tl.maximum(SPLITS - 1, 1)
    chunk = tl.cdiv(tl.cdiv(tl.maximum(nq - base, 0), quant_splits), BLOCK_N) * BLOCK_N
    start = base + split * chunk
    end = tl.minimum(start + chunk, nq)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    if SLIDING:
        if split == 0:  # sinks left of the window, still in the quantized store
            sink_end = tl.minimum(tl.minimum(sinks, lo), nq)
            for s0 in range(0, sink_end, BLOCK_N):
                ok = s0 + tl.arange(0, BLOCK_N) < sink_end
                k = _tile(KC + c_off, KS + ks_off, KZ + ks_off, s0, sink_end, ok, stride_cn, stride_ksn,
                          D, G, BLOCK_N, PACK, FP8, K_PER_CHANNEL, FP8_NATIVE, HALF, ASM)
                v = _tile(VC + c_off, VS + vs_off, VZ + vs_off, s0, sink_end, ok, stride_cn, stride_vsn,
                          D, G, BLOCK_N, PACK, FP8, False, FP8_NATIVE, HALF, ASM)
                m_i, l_i, acc = attend_tile(q, k, v, ok, m_i, l_i, acc, row_scale, PREC)
    for s0 in range(start, end, BLOCK_N):
        offs_n = s0 + tl.arange(0, BLOCK_N)
        ok = (offs_n < end) & (offs_n >= lo)
        k = _tile(KC + c_off, KS + ks_off, KZ + ks_off, s0, end, ok, stride_cn, stride_ksn,
                  D, G, BLOCK_N, PACK, FP8, K_PER_CHANNEL, FP8_NATIVE, HALF, ASM)
        v = _tile(VC + c_off, VS + vs_off, VZ + vs_off, s0, end, ok, stride_cn, stride_vsn,
                  D, G, BLOCK_N, PACK, FP8, False, FP8_NATIVE, HALF, ASM)
        m_i, l_i, acc = attend_tile(q, k, v, ok, m_i, l_i, acc, row_scale, PREC)
    if split == SPLITS - 1:  # the fp16 ring: slot s holds token nq + (s - nq) mod RING
        for s0 in range(0, RING, BLOCK_N):
            slots = s0 + tl.arange(0, BLOCK_N)
            t = nq + (slots + RING - nq % RING) % RING
            ok = (slots < RING) & (t < n)
            if SLIDING:
                ok = ok & ((t >= lo) | (t < sinks))
            ptr = r_off + slots[:, None] * stride_rn + offs_d[None, :]
            k = tl.load(KR + ptr, mask=ok[:, None], other=0.0).to(q.dtype)
            v = tl.load(VR + ptr, mask=ok[:, None], other=0.0).to(q.dtype)
            m_i, l_i, acc = attend_tile(q, k, v, ok, m_i, l_i, acc, row_scale, PREC)

    row = (b * HKV * GROUP + heads) * SPLITS + split
    store_partial(MID_O, MID_LSE, row, offs_g < GROUP, offs_d, m_i, l_i, acc, D)


KERNELS = (kvq_split,)


def kernel_constexprs(fmt: KVQuantFormat, head_dim: int, group: int, sliding: bool, block_n: int = 64,
                      dtype=torch.float32, fp8_native: bool = True, asm: bool = True) -> dict:
    """The compile-time parameters of ``kvq_split`` for a format (shared by the launcher and AOT).

    ``HALF``: fp16 / bf16 queries run fp16 tensor-core dots (fp32 queries: fp32 dots at ``PREC``); ``ASM``:
    compiled (inline PTX allowed), not interpreted."""
    return dict(RESIDUAL=fmt.residual, TOKEN_BLOCK=fmt.block, RING=fmt.ring, SLIDING=sliding,
                BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, D=head_dim, G=fmt.group,
                PACK=fmt.pack, FP8=fmt.kind == "fp8", K_PER_CHANNEL=fmt.keys == "channel", FP8_NATIVE=fp8_native,
                PREC=dot_precision(dtype), HALF=dtype in (torch.float16, torch.bfloat16), ASM=asm)


def config(head_dim: int) -> dict:
    """Key tile and launch shape of :func:`kvq_split` (the split count is :func:`num_splits`'s).

    Not yet timed on a GPU: chosen from the sm_90 builds' registers, spills and the instructions of the main
    loop (SASS, bf16 queries; see the module docstring's budget).  D=128: 32-key tiles (one key group of
    KIVI's G=32, so the key scales are one row), 4 warps and 3 stages (two tiles in flight): about 146
    registers for int8 (3 programs per SM), 116 for fp8 (4), no spills, ~2100 / ~1850 thread-instructions per
    key; 64-key tiles cost fewer instructions per key (~1750 / ~1500) but ~230 / ~175 registers (2 programs per
    SM, half the bytes in flight) and spill at 3 stages.  D=64: 64-key tiles, 4 warps, 2 stages (<= 128
    registers, no spills: 4 programs per SM).
    """
    if head_dim >= 128:
        return dict(block_n=32, num_warps=4, num_stages=3)
    return dict(block_n=64, num_warps=4, num_stages=2)


def num_splits(batch_kv_heads: int, cached: int, block_n: int, device) -> int:
    """Splits per (batch, kv head): about 12 programs per SM in all (whole waves at the 3 or 4 programs per SM
    that :func:`config`'s registers allow at D=128), each split of the quantized tokens at least 4 tiles, plus
    one split for the ring (when there are several) so the last split is not the longest."""
    sms = sm_count(device.index) if device.type == "cuda" else 4
    quant = min(triton.cdiv(12 * sms, batch_kv_heads) - 1, triton.cdiv(cached, 4 * block_n), 255)
    return 1 if quant <= 1 else quant + 1


def fp8_native(device) -> bool:
    """Hardware e4m3 conversion: sm_89 and later (and Triton's interpreter)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


def kvq_decode(q, k_parts, v_parts, kv_len, scale, mask="causal", fmt="int4", splits=0, block_n=0, num_warps=0,
               native_fp8=None):
    """``lcc.attention_kvq`` for one query token per sequence (decode) with a causal or sliding mask.

    The one launcher of :func:`kvq_split` (host side: torch ops on shapes; ``wrap_triton`` when compiled).
    """
    f = KVQuantFormat.parse(fmt) if isinstance(fmt, str) else fmt
    B, Hq, Sq, D = q.shape
    kc, ks, kz, kr = k_parts if f.kind == "int" else (k_parts[0], k_parts[1], k_parts[1], k_parts[2])
    vc, vs, vz, vr = v_parts if f.kind == "int" else (v_parts[0], v_parts[1], v_parts[1], v_parts[2])
    Hkv, C = kc.shape[1], kc.shape[2]
    spec = MaskSpec.parse(mask)
    if Sq != 1 or spec.kind not in ("causal", "sliding") or Hq % Hkv or D & (D - 1) or D < 16:
        raise ValueError(f"kvq_decode takes one query, a causal/sliding mask and a power-of-two head dim >= 16; "
                         f"got Sq={Sq}, {mask}, D={D}")
    f.check_head_dim(D)
    window, sinks = (spec.args["window"], spec.args["sinks"]) if spec.kind == "sliding" else (0, 0)
    lens = torch.full((1,), C, dtype=torch.int32, device=q.device) if kv_len is None else \
        kv_len.to(device=q.device, dtype=torch.int32).reshape(-1)[:1].contiguous()
    if kc.dtype == torch.float8_e4m3fn:
        kc, vc = kc.view(torch.uint8), vc.view(torch.uint8)
    q = q if q.stride(-1) == 1 else q.contiguous()
    group, cfg = Hq // Hkv, config(D)
    block_n = block_n or cfg["block_n"]
    splits = splits or num_splits(B * Hkv, C, block_n, q.device)
    mid_o = torch.empty(B, Hq, splits, D, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(B, Hq, splits, dtype=torch.float32, device=q.device)
    check_device(kvq_split, q)
    launcher(kvq_split)[(splits, B * Hkv)](
        q, kc, ks, kz, kr, vc, vs, vz, vr, lens, mid_o, mid_lse,
        q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
        vs.stride(0), vs.stride(1), vs.stride(2), kr.stride(0), kr.stride(1), kr.stride(2),
        Hkv, group, splits, window, sinks, scale * LOG2E,
        **kernel_constexprs(f, D, group, spec.kind == "sliding", block_n, q.dtype,
                            fp8_native(q.device) if native_fp8 is None else native_fp8,
                            not is_interpreted(kvq_split)),
        num_warps=num_warps or cfg["num_warps"], num_stages=cfg["num_stages"])
    return merge_splits(mid_o, mid_lse, q.new_empty(B, Hq, 1, D))


def _kvq_impl(q, k_parts, v_parts, kv_len, scale, mask, fmt):
    return kvq_decode(q, k_parts, v_parts, kv_len, scale, mask, fmt)


def register() -> None:
    """Make the kernel ``lcc.attention_kvq``'s implementation on CUDA and its ``triton`` lowering."""
    from lcc.backends.triton.register import kernel_only
    from lcc.ops import registry

    registry.register_impl("attention_kvq", registry.Impl("auto", "cuda", _kvq_impl, source=__name__))
    registry.register_lowering("attention_kvq", "triton", kernel_only("Triton split-K decode over the quantized cache"))


AOT_FORMATS = ("int4:group=32,keys=channel,residual=128", "int2:group=32,keys=channel,residual=128",
               "int8:group=64,keys=token,residual=0", "fp8:group=32,keys=channel,residual=128")


def aot_attrs(kernel, fmt: KVQuantFormat, head_dim: int, group: int, capacity: int = 4096, kv_heads: int = 8) -> dict:
    """The divisibility hints a JIT launch gives the compiler (``tt.divisibility`` 16 for 16-byte-aligned pointers
    and integer arguments that are multiples of 16), for the strides of a cache of ``capacity`` tokens: without
    them the byte codes load one byte per instruction and the build says nothing of the launched kernel."""
    q = torch.empty(1, kv_heads * group, 1, head_dim, device="meta")
    k = {name: torch.empty(shape, device="meta") for name, shape, _ in fmt.part_specs("k", 1, kv_heads, capacity,
                                                                                        head_dim)}
    v = {name: torch.empty(shape, device="meta") for name, shape, _ in fmt.part_specs("v", 1, kv_heads, capacity,
                                                                                        head_dim)}
    ints = dict(stride_qb=q.stride(0), stride_qh=q.stride(1), stride_cb=k["codes"].stride(0),
                stride_ch=k["codes"].stride(1), stride_cn=k["codes"].stride(2), stride_ksb=k["scale"].stride(0),
                stride_ksh=k["scale"].stride(1), stride_ksn=k["scale"].stride(2), stride_vsb=v["scale"].stride(0),
                stride_vsh=v["scale"].stride(1), stride_vsn=v["scale"].stride(2), stride_rb=k["res"].stride(0),
                stride_rh=k["res"].stride(1), stride_rn=k["res"].stride(2))
    aligned = [a for a in ("Q", "KC", "KS", "KZ", "KR", "VC", "VS", "VZ", "VR", "KV_LEN", "MID_O", "MID_LSE")]
    aligned += [a for a, x in ints.items() if x % 16 == 0]
    return {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}


def aot_variants(arch: int, quick: bool = False):
    """(name, kernel, signature, constexprs, options, attrs) to compile ahead of time for sm_<arch>: bf16 queries
    (the fp16 path), and in the full list one fp32-query build (the fp32 path)."""
    out = []  # the splits are merged by decode's merge kernel, compiled with decode's variants
    shapes = ((64, False), (128, True))
    for fmt in AOT_FORMATS[1::2] if quick else AOT_FORMATS:
        f = KVQuantFormat.parse(fmt)
        dtypes = (torch.bfloat16,) if quick or fmt != AOT_FORMATS[0] else (torch.bfloat16, torch.float32)
        for head_dim, sliding in shapes[f.kind == "fp8":][:1] if quick else shapes:
            for dtype in dtypes:
                cfg = config(head_dim)
                cx = kernel_constexprs(f, head_dim, 3, sliding, cfg["block_n"], dtype, fp8_native=arch >= 89)
                sig = {a: "i32" for a in kvq_split.arg_names if a not in cx}
                sig.update({"Q": "*bf16" if dtype == torch.bfloat16 else "*fp32", "KC": "*u8", "VC": "*u8",
                            "KS": "*fp16", "KZ": "*fp16", "KR": "*fp16", "VS": "*fp16", "VZ": "*fp16",
                            "VR": "*fp16", "KV_LEN": "*i32", "MID_O": "*fp32", "MID_LSE": "*fp32",
                            "qk_scale": "fp32"})
                sig.update({a: "constexpr" for a in cx})
                q = "bf16" if dtype == torch.bfloat16 else "fp32"
                out.append((f"kvq_split[{f},{q},d={head_dim},{'sliding' if sliding else 'causal'}]", kvq_split, sig,
                            cx, dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]),
                            aot_attrs(kvq_split, f, head_dim, 3)))
    return out


def resource_usage(cubin: bytes) -> dict:
    """{"registers", "stack"} per thread of a cubin's kernel (``cuobjdump``, shipped with Triton's CUDA backend;
    stack > 0: registers spilled to local memory), or {} where cuobjdump is not there."""
    import os
    import re
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.isfile(tool):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return dict(registers=int(m[1]), stack=int(m[2])) if m else {}


def aot_compile(archs=(80, 90), quick: bool = False) -> list[dict]:
    """Compile the variants for each architecture with no GPU (``TRITON_INTERPRET`` must be unset)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    records = []
    for arch in archs:
        for name, kernel, sig, cx, options, attrs in aot_variants(arch, quick):
            try:
                c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cx, attrs=attrs),
                                   target=GPUTarget("cuda", arch, 32), options=options)
                records.append(dict(kernel=name, arch=arch, ok=True, cubin=len(c.asm["cubin"]),
                                    shared=c.metadata.shared, **resource_usage(c.asm["cubin"])))
            except Exception as e:  # report every failure
                records.append(dict(kernel=name, arch=arch, ok=False, error=f"{type(e).__name__}: {e}"[:2000]))
    return records


register()

if __name__ == "__main__":  # python -m lcc.backends.triton.kv_decode [--quick] [ARCH ...]: JSON line per kernel
    import json
    import sys

    args = [a for a in sys.argv[1:] if a != "--quick"]
    recs = aot_compile(tuple(int(a) for a in args) or (80, 90), quick="--quick" in sys.argv)
    for r in recs:
        print(json.dumps(r))
    sys.exit(0 if all(r["ok"] for r in recs) else 1)
