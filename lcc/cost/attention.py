"""Cost of one ``lcc.attention`` node under each ``algo``, as the implementation that runs executes it.

The op's own ``attention_cost`` counts the useful work (kept pairs, q/k/v/out moved once: an
IO-aware kernel).  What runs depends on ``algo`` and the device (``lcc.ops.attention``):

- ``reference``: the whole [B, H, Sq, Sk] fp32 score matrix, then its softmax (both alive);
- ``auto``: query-row chunks of ~256 MiB of scores over *all* keys (no skipping), the
  eager-identical path, on the CPU and on CUDA alike (the torch and ONNX backends run it
  unfused: every score goes through memory; only ``--backend triton`` swaps in its kernel,
  so a plan that wants the IO-aware kernel names ``flash``);
- ``chunked:chunk=c``: c query rows at a time over the key ranges the mask can see;
- ``flash`` on the CPU: PyTorch's fused SDPA kernel (tiled online softmax, causal blocks
  skipped) for causal self-attention and for queries that are the last of more keys (twice,
  merged), the chunked path with a chunk it picks (<= 1024,
  >= 8 chunks) for anything else;
- ``flash``/``decode`` on CUDA: the Triton kernels: tiles in SRAM, only the output in HBM.

A materialised score element costs ``SCORE_BYTES`` of memory traffic (the QK^T write, the
scale, the mask fill, softmax read+write, nan_to_num, the PV read: 40 bytes in fp32) and
``SCORE_FLOPS`` vector FLOPs; the two GEMMs are matmul FLOPs.  The working set of a chunk is
its scores and their softmax (8 bytes per element), the boolean masks (3 bytes per query-key
position) and the key/value copies a broadcasting matmul makes for GQA.
"""

from __future__ import annotations

from functools import lru_cache

import sympy

from lcc.cost.nodes import Kernel
from lcc.ops.attention import CHUNK_BYTES, attention_cost, mask_pairs, parse_algo
from lcc.ops.masks import MaskSpec

SCORE_BYTES = 40
SCORE_FLOPS = 8
MASK_BYTES = 3
IO_AWARE = {"flash", "decode"}  # algos that run an IO-aware kernel on CUDA whatever the backend
SDPA_VECTOR_FLOPS = 4  # per kept pair in the fused CPU kernel: scale, max, exp, sum
SDPA_BLOCK = (256, 512)  # query x key block of PyTorch's CPU flash kernel (fp32, long sequences)


def _auto_rows(B, Hq, Sq, Sk, skip_keys: bool):
    """The query rows per chunk ``attention_chunked`` picks with chunk=0 (see lcc.ops.attention)."""
    rows = sympy.Max(16, sympy.floor(sympy.Integer(CHUNK_BYTES) / (4 * B * Hq * Sk)))
    if skip_keys:
        rows = sympy.Min(rows, sympy.Max(16, sympy.ceiling(Sq / 8)), 1024)
    return sympy.Min(rows, Sq)


def _visible(spec: MaskSpec, Sq, Sk, rows):
    """(pairs the chunked path computes, keys of its widest chunk) when it skips invisible keys."""
    if spec.kind == "full":
        return Sq * Sk, Sk
    causal_exec = Sq * Sk - Sq * Sq / 2 + Sq * rows / 2  # sum over chunks of rows * (last key + 1)
    if spec.kind == "causal":
        return sympy.Min(Sq * Sk, causal_exec), Sk
    if spec.kind == "sliding":
        w, s = spec.args["window"], spec.args["sinks"]
        span = w + s + rows - 1  # sinks plus the window of a chunk's rows
        # the first m chunks (queries before w + s) read the causal prefix instead: rows * (i + 1) rows keys
        m = sympy.Min(sympy.ceiling(Sq / rows), sympy.Max(0, sympy.floor((w + s - 1 - (Sk - Sq)) / rows) + 1))
        early = rows * rows * m * (m + 1) / 2 + rows * m * (Sk - Sq)
        return sympy.Min(Sq * Sk, causal_exec, early + sympy.Max(0, Sq - m * rows) * span), sympy.Min(Sk, span)
    # other kinds: the pairs the mask keeps plus a half chunk of ragged edge per row, never past causal
    return sympy.Min(causal_exec, mask_pairs(str(spec), Sq, Sk) + Sq * rows / 2), Sk


@lru_cache(maxsize=4096, typed=True)
def attention_node_cost(B, Hq, Hkv, Sq, Sk, D, Dv, mask: str, algo: str, device: str, itemsize: int = 4,
                        dtype: str = "float32", self_attention: bool = True, suffix: bool = False):
    """(kernels, working set bytes beyond the output) of one attention call.

    ``self_attention``: the queries are the last Sq of the keys and no cache length is given (prefill; a
    context-parallel rank's chunk against the keys up to its end), the case the CPU ``flash`` path hands to
    PyTorch's fused kernel: once when Sq is Sk, twice (prefix unmasked, diagonal block causal) merged by their
    log-sum-exp when Sq < Sk (``lcc.ops.attention._causal_suffix_cpu``, which also expands GQA's K/V to the
    query heads first).  ``suffix``: that second case, whose extra work (the K/V copies and the merge) is
    priced only when the caller knows Sq < Sk (a context-parallel chunk): prefill prices the chunk L against
    the keys K symbolically, one fused call where they are equal.  Memoised (its arguments and results are
    immutable): every layer of every candidate the planner prices asks the same few questions, and building
    these formulas was a quarter of the planner's time.
    """
    name, args = parse_algo(algo)
    spec = MaskSpec.parse(mask)
    useful_flops, moved, _ = attention_cost(B, Hq, Hkv, Sq, Sk, D, Dv, mask, itemsize)
    if device == "cuda" and name in IO_AWARE:
        return (Kernel(useful_flops, moved, "matmul", dtype),), sympy.Integer(0)
    if device == "cpu" and name == "flash" and spec.kind == "causal" and self_attention:
        pairs = mask_pairs(mask, Sq, Sk)
        kernels = (Kernel(useful_flops, moved, "matmul", dtype),
                   Kernel(SDPA_VECTOR_FLOPS * B * Hq * pairs, sympy.Integer(0), "vector", dtype))
        qb, kb = SDPA_BLOCK  # score, softmax and accumulator blocks per thread (2), and the log-sum-exp rows
        work = sympy.Integer(4 * 3 * qb * kb * 2) + 4 * B * Hq * Sq
        if suffix:  # the suffix case: K/V copied to the query heads (GQA), two fp32 partials merged by lse
            copies = itemsize * B * Hq * Sk * (D + Dv) if Hq != Hkv else 0
            partials = 4 * B * Hq * Sq * (2 * Dv + 2)
            kernels += (Kernel(6 * B * Hq * Sq * (Dv + 1), 2 * copies + partials + itemsize * B * Hq * Sq * Dv,
                               "vector", dtype),)
            work += copies + partials
        return kernels, work
    if name == "reference":
        rows, pairs, keys = Sq, Sq * Sk, Sk
    elif name == "auto":
        rows, pairs, keys = _auto_rows(B, Hq, Sq, Sk, skip_keys=False), Sq * Sk, Sk
    else:  # chunked, and any algo without an implementation here (the op runs the chunked path)
        rows = sympy.Min(Sq, args["chunk"]) if args.get("chunk", 0) > 0 else _auto_rows(B, Hq, Sq, Sk, True)
        pairs, keys = _visible(spec, Sq, Sk, rows)
    elems = B * Hq * pairs
    qkv = itemsize * B * (Hq * Sq * D + Hkv * Sk * (D + Dv))
    kernels = (
        Kernel(2 * D * elems, qkv + 4 * elems, "matmul", "float32"),
        Kernel(SCORE_FLOPS * elems, (SCORE_BYTES - 8) * elems + MASK_BYTES * B * pairs, "vector", "float32"),
        Kernel(2 * Dv * elems, 4 * elems + itemsize * B * Hq * Sq * Dv, "matmul", "float32"),
    )
    work = 8 * B * Hq * rows * keys + MASK_BYTES * B * rows * keys + 4 * B * Hq * keys * max(D, Dv)
    return kernels, work


def working_set(B, Hq, Hkv, Sq, Sk, D, Dv, mask: str, algo: str, device: str, itemsize: int = 4,
                suffix: bool = False):
    """Bytes an attention call holds while it runs, its output included."""
    _, work = attention_node_cost(B, Hq, Hkv, Sq, Sk, D, Dv, mask, algo, device, itemsize, suffix=suffix)
    return work + itemsize * B * Hq * Sq * Dv
