"""What an ONNX artifact's target changes: its providers, its dtype, its offline optimisation, its cache.

A ``cuda`` target runs on onnxruntime's CUDA provider (then the CPU provider for what CUDA lacks);
a ``cpu`` target on the CPU provider alone.  Its graphs are fp16: the CUDA provider's
``GroupQueryAttention`` (flash / memory-efficient kernels) is registered for float16 and bfloat16
only, so an fp32 graph would run every attention on the CPU, copying the cache across per step.
Of the two, float16: the same graph also runs on the CPU provider (which has no bfloat16
MatMul), so a cuda artifact's numerics can be checked on a machine without a GPU.  Its graphs are
saved as exported: onnxruntime's offline optimisation is computed for the provider it runs
on, and on the CPU it wraps each fp16 node without a CPU kernel in fp32 casts
(``InsertedPrecisionFreeCast``), which would then run on the GPU too; the CUDA session
optimises at load.  KV-cache quantization: see :func:`kv_quant_refusal`.
"""

from __future__ import annotations

from lcc.errors import UsageError
from lcc.target import Target

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
CUDA_DTYPE = "float16"
QUANT_ATTRIBUTES = ("k_quant_type", "v_quant_type", "kv_cache_bit_width")


def providers(target: Target) -> list[str]:
    """onnxruntime providers in priority order: CUDA then CPU for a cuda target, the CPU for a cpu one."""
    return [CUDA, CPU] if target.is_cuda else [CPU]


def default_dtype(target: Target) -> str:
    """The dtype a compile for ``target`` uses when ``--dtype`` is not given: fp16 on CUDA, else fp32."""
    return CUDA_DTYPE if target.is_cuda else "float32"


def check_dtype(target: Target, dtype: str) -> None:
    """Usage error for a cuda target in a dtype the CUDA provider's GroupQueryAttention does not run."""
    if target.is_cuda and dtype != CUDA_DTYPE:
        raise UsageError(f"--dtype {dtype} with --target {target}: onnxruntime's CUDA GroupQueryAttention runs "
                         f"float16 / bfloat16 only, and lcc's onnx backend emits float16; give --dtype float16")


def check_providers(target: Target, where: str) -> None:
    """Usage error when this onnxruntime cannot run ``where`` (an artifact built for ``target``)."""
    import onnxruntime as ort

    if target.is_cuda and CUDA not in ort.get_available_providers():
        raise UsageError(f"{where} is an onnx artifact for {target}, and this onnxruntime has no "
                         f"CUDAExecutionProvider (it has {', '.join(ort.get_available_providers())}): install "
                         "onnxruntime-gpu (pip install 'lcc[cuda]') or recompile with --target cpu")
    import torch

    if target.is_cuda and not torch.cuda.is_available():  # the runner keeps the cache in torch CUDA tensors
        raise UsageError(f"{where} is an onnx artifact for {target}, and torch sees no CUDA device here; run it "
                         "where torch has CUDA or recompile with --target cpu")


def optimize_offline(target: Target) -> bool:
    """Whether to save onnxruntime's optimised graphs at compile time (only for the CPU provider, see above)."""
    return not target.is_cuda


def gqa_quant_attributes() -> tuple[str, ...]:
    """The quantized-cache attributes this onnxruntime's ``com.microsoft::GroupQueryAttention`` schema has."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    for s in C.get_all_operator_schema():
        if s.domain == "com.microsoft" and s.name == "GroupQueryAttention":
            return tuple(a for a in QUANT_ATTRIBUTES if a in s.attributes)
    return ()


def kv_quant_refusal(layout) -> str | None:
    """Why a quantized cache (``kv-quant``) cannot lower to onnx, None for an unquantized one.

    GroupQueryAttention's own quantized cache (``k_quant_type`` / ``v_quant_type`` PER_TENSOR or
    PER_CHANNEL, ``kv_cache_bit_width`` 8 or 4, where this onnxruntime has them) is symmetric with
    fixed ``k_scale`` / ``v_scale`` inputs; lcc's cache computes its scales and zero points from the
    tokens per group and keeps the recent tokens in fp16 (KIVI, :mod:`lcc.ops.kv_cache`), a different
    cache that GroupQueryAttention can neither read nor write.  The ops' reference does not export.
    """
    if layout.quant is None:
        return None
    have = gqa_quant_attributes()
    gqa = (f"this onnxruntime's GroupQueryAttention quantizes its cache ({', '.join(have)}) with fixed symmetric "
           "scales given as inputs, while lcc's" if have else
           "this onnxruntime's GroupQueryAttention has no quantized-cache attributes, and lcc's")
    return (f"kv-quant ({layout.quant}): {gqa} cache computes scales and zero points per group from the tokens "
            "and keeps recent tokens in fp16, and its reference does not export to onnx; compile without "
            "kv-quant for onnx, or use --backend torch or triton")
