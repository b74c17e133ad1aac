"""Ahead-of-time compilation of every Triton kernel for sm_80 (A100) and sm_90 (H100), no GPU needed.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole
pipeline (TTIR, TTGIR, LLVM IR, PTX, and a cubin from the ptxas bundled with triton);
each variant uses the launcher's own block sizes, and its shared memory is checked
against the architecture's per-block limit, so a kernel that would not launch on an
H100 fails here.  Needs triton in compiled mode (``TRITON_INTERPRET`` unset);
``python -m lcc.backends.triton.aot [--full]`` prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lcc.backends.triton import attention, decode, linear_attention
from lcc.backends.triton.interpret import dot_precision, is_interpreted, pow2
from lcc.backends.triton.mask_mods import kernel_predicates

ARCHS = (80, 90)
SHARED_LIMIT = {80: 166912, 90: 232448}  # max dynamic shared memory per block, bytes
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: object
    pointers: dict  # argument -> element type ("bf16", "i32", ...)
    constexprs: dict
    floats: tuple = ()
    options: dict = field(default_factory=dict)

    def source(self) -> ASTSource:
        sig = {}
        for arg in self.kernel.arg_names:
            if arg in self.constexprs:
                sig[arg] = "constexpr"
            elif arg in self.pointers:
                sig[arg] = "*" + self.pointers[arg]
            else:
                sig[arg] = "fp32" if arg in self.floats else "i32"
        return ASTSource(fn=self.kernel, signature=sig, constexprs=self.constexprs)


def attention_variant(dtype, head_dim, mask_kind, q_len=4096) -> Variant:
    cfg = attention.config(head_dim, dtype, q_len)
    t = TRITON_TYPES[dtype]
    return Variant(
        f"attn_fwd[{t},d={head_dim},{mask_kind}]", attention.attn_fwd,
        {"Q": t, "K": t, "V": t, "O": t, "KV_LEN": "i32", "ROW_PTR": "i32", "N_FULL": "i32", "COLS": "i32"},
        dict(MASK=kernel_predicates()[mask_kind], BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], D=head_dim,
             DV=head_dim, BLOCK_D=pow2(head_dim), BLOCK_DV=pow2(head_dim), PREC=dot_precision(dtype),
             UPCAST=False),
        floats=("qk_scale", "softcap"), options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))


def decode_variants(dtype, head_dim, group, sliding) -> list[Variant]:
    t, cfg = TRITON_TYPES[dtype], decode.config(head_dim)
    split = Variant(
        f"decode_split[{t},d={head_dim},g={group},{'sliding' if sliding else 'causal'}]", decode.decode_split,
        {"Q": t, "K": t, "V": t, "KV_LEN": "i32", "MID_O": "fp32", "MID_LSE": "fp32"},
        dict(SLIDING=sliding, BLOCK_G=pow2(group), BLOCK_N=cfg["block_n"], D=head_dim, DV=head_dim,
             BLOCK_D=pow2(head_dim), BLOCK_DV=pow2(head_dim), PREC=dot_precision(dtype),
             UPCAST=False),
        floats=("qk_scale", "softcap"), options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
    merge = Variant(f"decode_merge[{t},d={head_dim}]", decode.decode_merge,
                    {"MID_O": "fp32", "MID_LSE": "fp32", "O": t},
                    dict(BLOCK_S=128, DV=head_dim, BLOCK_DV=pow2(head_dim)), options=dict(num_warps=4))
    return [split, merge]


def linear_variant(dtype, features, head_dim) -> Variant:
    t, cfg = TRITON_TYPES[dtype], linear_attention.config(features, head_dim)
    return Variant(
        f"linear_attn[{t},f={features},dv={head_dim}]", linear_attention.linear_attn_fwd,
        {"PQ": "fp32", "PK": "fp32", "V": t, "O": t},
        dict(F=features, DV=head_dim, CHUNK=cfg["chunk"], BLOCK_F=cfg["block_f"], BLOCK_DV=cfg["block_dv"],
             PREC=dot_precision(dtype)),
        floats=("eps",), options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))


def variants(full: bool = False) -> list[Variant]:
    """Every kernel: the quick set covers every kernel function and mask kind once; ``full`` adds each
    dtype x head dim (fp32, whose ieee dots unroll to FMA and compile slowly, at head dim 64 only)."""
    out = [attention_variant(torch.bfloat16, 128, m) for m in kernel_predicates()]
    out += [attention_variant(torch.float16, 256, "causal")]
    out += decode_variants(torch.bfloat16, 128, 4, True) + decode_variants(torch.float16, 64, 8, False)[:1]
    out += [linear_variant(torch.bfloat16, 64, 128)]
    if full:
        shapes = [(dt, d) for dt in (torch.float16, torch.bfloat16) for d in (64, 128, 256)] + [(torch.float32, 64)]
        out += [attention_variant(dt, d, "sliding") for dt, d in shapes]
        out += [v for dt, d in shapes for s in (False, True) for v in decode_variants(dt, d, 4, s)]
        out += [linear_variant(dt, d, 128) for dt, d in shapes]
    unique = {v.name: v for v in out}
    return list(unique.values())


def compile_variant(v: Variant, arch: int):
    """Compile one variant for sm_<arch>; raises if it fails or overflows shared memory."""
    compiled = triton.compile(v.source(), target=GPUTarget("cuda", arch, 32), options=v.options)
    if compiled.metadata.shared > SHARED_LIMIT[arch]:
        raise RuntimeError(f"{v.name} needs {compiled.metadata.shared} B shared memory, sm_{arch} has "
                           f"{SHARED_LIMIT[arch]}")
    return compiled


def compile_all(archs=ARCHS, full: bool = False) -> dict:
    """{(variant name, arch): compiled kernel} with ``.asm['ptx']`` and ``.asm['cubin']``."""
    if is_interpreted(attention.attn_fwd):
        raise RuntimeError("TRITON_INTERPRET=1: kernels are interpreted; run AOT in a process without it")
    return {(v.name, arch): compile_variant(v, arch) for v in variants(full) for arch in archs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every dtype x head dim x mask")
    ap.add_argument("--arch", type=int, nargs="*", default=list(ARCHS))
    ap.add_argument("--json", action="store_true", help="print one JSON record per compiled kernel")
    args = ap.parse_args(argv)
    failed = 0
    for v in variants(args.full):
        for arch in args.arch:
            t0 = time.perf_counter()
            try:
                c = compile_variant(v, arch)
                rec = dict(kernel=v.name, arch=arch, ok=True, ptx=len(c.asm["ptx"]), cubin=len(c.asm["cubin"]),
                           shared=c.metadata.shared, seconds=round(time.perf_counter() - t0, 2))
            except Exception as e:  # report every failure, not just the first
                failed += 1
                rec = dict(kernel=v.name, arch=arch, ok=False, error=f"{type(e).__name__}: {e}"[:2000])
            print(json.dumps(rec) if args.json else
                  f"sm_{arch} {v.name:48s} " + (f"ok  cubin {rec['cubin']:>7d} B  smem {rec['shared']:>6d} B  "
                                                 f"{rec['seconds']:.1f}s" if rec["ok"] else "FAIL " + rec["error"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
