"""Split-K flash decoding over a quantized KV cache (KIVI int8/4/2 or fp8 e4m3), dequantized in registers.

The cache is ``lcc.ops.kv_cache``'s parts: packed codes, fp16 scale (and zero) per group, and
an fp16 ring of the most recent tokens.  Each program takes the query heads that share one
kv head, a chunk of the quantized tokens, and (the last split) the ring; it loads codes,
unpacks and scales them in registers (no dequantized copy of the cache is ever written),
runs an online softmax and writes a partial output and its log-sum-exp, which a second kernel
merges (Dao et al. 2023, Flash-Decoding).  Masks: causal, or sliding window with sinks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lcc.backends.triton.decode import merge_splits, sm_count, split_program, store_partial
from lcc.backends.triton.interpret import check_device, dot_precision, launcher
from lcc.backends.triton.online_softmax import LOG2E, softmax_update
from lcc.ops.kv_cache import KVQuantFormat
from lcc.ops.masks import MaskSpec


@triton.jit
def _e4m3_to_f32(b):
    """float8_e4m3fn bytes to fp32 with integer ops, for GPUs without fp8 conversions (sm_80)."""
    e = ((b >> 3) & 15).to(tl.int32)
    m = (b & 7).to(tl.float32)
    mag = tl.where(e > 0, (8.0 + m) * tl.math.exp2((e - 10).to(tl.float32)), m * 0.001953125)  # m * 2^-9
    return tl.where((b >> 7) != 0, -mag, mag)


@triton.jit
def _dequant(C, S, Z, offs_n, ok_n, stride_cn, stride_sn, D: tl.constexpr, G: tl.constexpr,
             BLOCK_N: tl.constexpr, PACK: tl.constexpr, FP8: tl.constexpr, PER_CHANNEL: tl.constexpr,
             FP8_NATIVE: tl.constexpr):
    """[BLOCK_N, D] fp32 values of tokens ``offs_n``: unpack the codes, then code * scale (+ zero)."""
    offs_b = tl.arange(0, D // PACK)
    offs_d = tl.arange(0, D)
    b = tl.load(C + offs_n[:, None].to(tl.int64) * stride_cn + offs_b[None, :], mask=ok_n[:, None], other=0)
    if FP8:
        if FP8_NATIVE:
            c = b.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        else:
            c = _e4m3_to_f32(b)
    elif PACK == 1:
        c = b.to(tl.float32)
    elif PACK == 2:  # element 2i in the low nibble, 2i+1 in the high one
        c = tl.join(b & 15, b >> 4).reshape(BLOCK_N, D).to(tl.float32)
    else:  # PACK == 4: element 4i+j in bits 2j..2j+1 (join interleaves innermost first)
        c = tl.join(tl.join(b & 3, (b >> 4) & 3), tl.join((b >> 2) & 3, b >> 6)).reshape(BLOCK_N, D).to(tl.float32)
    if PER_CHANNEL:  # one scale per channel per group of G tokens
        s_off = (offs_n // G)[:, None].to(tl.int64) * stride_sn + offs_d[None, :]
    else:  # one scale per token per group of G channels
        s_off = offs_n[:, None].to(tl.int64) * stride_sn + (offs_d // G)[None, :]
    s = tl.load(S + s_off, mask=ok_n[:, None], other=0.0).to(tl.float32)
    if FP8:
        return c * s
    z = tl.load(Z + s_off, mask=ok_n[:, None], other=0.0).to(tl.float32)
    return c * s + z


@triton.jit
def attend_tile(q, k, v, ok, m_i, l_i, acc, qk_scale, PREC: tl.constexpr):
    """One online-softmax update with keys k / values v [BLOCK_N, D] where ``ok``."""
    qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    qk = tl.where(ok[None, :], qk, float("-inf"))
    return softmax_update(qk, v, m_i, l_i, acc, PREC)


@triton.jit
def kvq_split(Q, KC, KS, KZ, KR, VC, VS, VZ, VR, KV_LEN, MID_O, MID_LSE,
              stride_qb, stride_qh, stride_cb, stride_ch, stride_cn, stride_ksb, stride_ksh, stride_ksn,
              stride_vsb, stride_vsh, stride_vsn, stride_rb, stride_rh, stride_rn,
              HKV, GROUP, SPLITS, window, sinks, qk_scale,
              RESIDUAL: tl.constexpr, TOKEN_BLOCK: tl.constexpr, RING: tl.constexpr, SLIDING: tl.constexpr,
              BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
              PACK: tl.constexpr, FP8: tl.constexpr, K_PER_CHANNEL: tl.constexpr, FP8_NATIVE: tl.constexpr,
              PREC: tl.constexpr):
    tl.static_assert(D % PACK == 0)
    split, b, hk = split_program(HKV)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    heads = hk * GROUP + offs_g
    q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=offs_g[:, None] < GROUP, other=0.0).to(tl.float32)
    c_off = b.to(tl.int64) * stride_cb + hk.to(tl.int64) * stride_ch  # K and V codes share a layout
    ks_off = b.to(tl.int64) * stride_ksb + hk.to(tl.int64) * stride_ksh
    vs_off = b.to(tl.int64) * stride_vsb + hk.to(tl.int64) * stride_vsh
    r_off = b.to(tl.int64) * stride_rb + hk.to(tl.int64) * stride_rh

    n = tl.load(KV_LEN)
    nq = tl.maximum(n - RESIDUAL, 0) // TOKEN_BLOCK * TOKEN_BLOCK  # tokens [0, nq) quantized, [nq, n) in the ring
    lo = 0
    if SLIDING:  # the query sits at n - 1 and keeps keys >= n - window (plus the sinks)
        lo = tl.maximum(n - window, 0)
    chunk = tl.cdiv(tl.cdiv(tl.maximum(nq - lo, 0), SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * chunk
    end = tl.minimum(start + chunk, nq)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    if SLIDING:
        if split == 0:  # sinks left of the window, still in the quantized store
            for s0 in range(0, tl.minimum(tl.minimum(sinks, lo), nq), BLOCK_N):
                offs_n = s0 + tl.arange(0, BLOCK_N)
                ok = offs_n < tl.minimum(tl.minimum(sinks, lo), nq)
                k = _dequant(KC + c_off, KS + ks_off, KZ + ks_off, offs_n, ok, stride_cn, stride_ksn,
                             D, G, BLOCK_N, PACK, FP8, K_PER_CHANNEL, FP8_NATIVE)
                v = _dequant(VC + c_off, VS + vs_off, VZ + vs_off, offs_n, ok, stride_cn, stride_vsn,
                             D, G, BLOCK_N, PACK, FP8, False, FP8_NATIVE)
                m_i, l_i, acc = attend_tile(q, k, v, ok, m_i, l_i, acc, qk_scale, PREC)
    for s0 in range(start, end, BLOCK_N):
        offs_n = s0 + tl.arange(0, BLOCK_N)
        ok = offs_n < end
        k = _dequant(KC + c_off, KS + ks_off, KZ + ks_off, offs_n, ok, stride_cn, stride_ksn,
                     D, G, BLOCK_N, PACK, FP8, K_PER_CHANNEL, FP8_NATIVE)
        v = _dequant(VC + c_off, VS + vs_off, VZ + vs_off, offs_n, ok, stride_cn, stride_vsn,
                     D, G, BLOCK_N, PACK, FP8, False, FP8_NATIVE)
        m_i, l_i, acc = attend_tile(q, k, v, ok, m_i, l_i, acc, qk_scale, PREC)
    if split == SPLITS - 1:  # the fp16 ring: slot s holds token nq + (s - nq) mod RING
        for s0 in range(0, RING, BLOCK_N):
            slots = s0 + tl.arange(0, BLOCK_N)
            t = nq + (slots + RING - nq % RING) % RING
            ok = (slots < RING) & (t < n)
            if SLIDING:
                ok = ok & ((t >= lo) | (t < sinks))
            ptr = r_off + slots[:, None].to(tl.int64) * stride_rn + offs_d[None, :]
            k = tl.load(KR + ptr, mask=ok[:, None], other=0.0).to(tl.float32)
            v = tl.load(VR + ptr, mask=ok[:, None], other=0.0).to(tl.float32)
            m_i, l_i, acc = attend_tile(q, k, v, ok, m_i, l_i, acc, qk_scale, PREC)

    row = (b * HKV * GROUP + heads) * SPLITS + split
    store_partial(MID_O, MID_LSE, row, offs_g < GROUP, offs_d, m_i, l_i, acc, D)


KERNELS = (kvq_split,)


def kernel_constexprs(fmt: KVQuantFormat, head_dim: int, group: int, sliding: bool, block_n: int = 64,
                      dtype=torch.float32, fp8_native: bool = True) -> dict:
    """The compile-time parameters of ``kvq_split`` for a format (shared by the launcher and AOT)."""
    return dict(RESIDUAL=fmt.residual, TOKEN_BLOCK=fmt.block, RING=fmt.ring, SLIDING=sliding,
                BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, D=head_dim, G=fmt.group,
                PACK=fmt.pack, FP8=fmt.kind == "fp8", K_PER_CHANNEL=fmt.keys == "channel", FP8_NATIVE=fp8_native,
                PREC=dot_precision(dtype))


def config(head_dim: int) -> dict:
    """Key tile and launch shape of :func:`kvq_split` (the split count is :func:`num_splits`'s).

    Chosen by the registers of the sm_90 build (``aot_compile``'s ``stack``: bytes per thread spilled to
    local memory): dequantized [BLOCK_N, D] fp32 tiles of codes, scales and zeros are live together, and
    the former 64-key tile with 2 warps spilled 6 KiB per thread at D=128 (int8), which made every
    quantized format slower than the bf16 cache on an H200.  Now D=128 spills nothing (int8, int4, fp8)
    and D=64 nothing for int8 / int4 (fp8: 32 bytes).  Not yet timed on a GPU.
    """
    if head_dim >= 128:
        return dict(block_n=16, num_warps=4, num_stages=3)
    return dict(block_n=32, num_warps=2, num_stages=3)


def num_splits(batch_kv_heads: int, cached: int, block_n: int, device) -> int:
    """About 8 programs per SM (swept on an H100 with bench/kv.py's shapes: 2-3x over 128 programs in all)."""
    sms = sm_count(device.index) if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(cached, 2 * block_n), triton.cdiv(8 * sms, batch_kv_heads), 512))


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
                            fp8_native(q.device) if native_fp8 is None else native_fp8),
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


def aot_variants(arch: int, quick: bool = False):
    """(name, kernel, signature, constexprs, options) to compile ahead of time for sm_<arch>."""
    out = []  # the splits are merged by decode's merge kernel, compiled with decode's variants
    shapes = ((64, False), (128, True))
    for fmt in AOT_FORMATS[1::2] if quick else AOT_FORMATS:
        f = KVQuantFormat.parse(fmt)
        for head_dim, sliding in shapes[f.kind == "fp8":][:1] if quick else shapes:
            cfg = config(head_dim)
            cx = kernel_constexprs(f, head_dim, 3, sliding, cfg["block_n"], fp8_native=arch >= 89)
            sig = {a: "i32" for a in kvq_split.arg_names if a not in cx}
            sig.update({"Q": "*fp32", "KC": "*u8", "VC": "*u8", "KS": "*fp16", "KZ": "*fp16", "KR": "*fp16",
                        "VS": "*fp16", "VZ": "*fp16", "VR": "*fp16", "KV_LEN": "*i32", "MID_O": "*fp32",
                        "MID_LSE": "*fp32", "qk_scale": "fp32"})
            sig.update({a: "constexpr" for a in cx})
            out.append((f"kvq_split[{f},d={head_dim},{'sliding' if sliding else 'causal'}]", kvq_split, sig, cx,
                        dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])))
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
        for name, kernel, sig, cx, options in aot_variants(arch, quick):
            try:
                c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cx),
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
