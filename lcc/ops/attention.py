"""``lcc.attention``: scaled dot-product attention with a mask predicate, GQA native.

Shapes: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv] with Hq % Hkv == 0;
query head h reads key/value head h // (Hq // Hkv) (HF ``repeat_kv`` order).
Queries are aligned to the end of the valid keys: with ``kv_len`` keys valid
(None means all Sk), query i sits at absolute position kv_len - Sq + i and key j at
position j; keys at j >= kv_len are never read.  Prefill (Sq = Sk), decode (Sq = 1
against a cache) and chunked prefill are all this one op.  ``mask`` is a spec
string (:mod:`lcc.ops.masks`); ``algo`` picks an implementation, never the result.
"""

from __future__ import annotations

import math

import sympy
import torch

from lcc.ops import registry
from lcc.ops.masks import MaskSpec, mask_pairs

# Query rows per chunk are chosen so one chunk's score matrix stays under this many bytes.
CHUNK_BYTES = 256 * 1024 * 1024


def _positions(kv_len, B, Sq, Sk, device):
    """Absolute query positions [B, Sq] and the number of valid keys [B, 1]."""
    if kv_len is None:
        n = torch.full((B, 1), Sk, device=device, dtype=torch.long)
    else:
        n = kv_len.to(device=device, dtype=torch.long).reshape(-1, 1).expand(B, 1)
    q_pos = n - Sq + torch.arange(Sq, device=device)[None, :]
    return q_pos, n


def softcap_scores(scores, softcap: float):
    """Gemma 2's attention-logit soft-capping, in place: ``tanh(s / cap) * cap`` on the scaled scores, before
    the mask (transformers' ``eager_attention_forward`` of gemma2, same order); ``softcap`` 0: unchanged."""
    if softcap:
        scores.div_(softcap).tanh_().mul_(softcap)
    return scores


def _attend_rows(q, k, v, q_pos, n_valid, scale, mask_mod, kv_idx=None, grouped=False, softcap=0.0):
    """Plain softmax(softcap(q k^T * scale) + mask) v for a block of query rows, in fp32.

    ``kv_idx`` gives the absolute positions of the keys passed (all of them by default).  By
    default each query head multiplies its own broadcast copy of its key/value head (the GEMM
    shapes of eager attention after ``repeat_kv``); ``grouped`` stacks a KV head's G query heads
    into one GEMM against the keys as they lie, so no copy of K or V is made (a decode step's
    cost is then reading the filled cache once).
    """
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    if kv_idx is None:
        kv_idx = torch.arange(Sk, device=q.device)
    if grouped:
        qg = q.float().reshape(B, Hkv, G * Sq, D)
        scores = torch.matmul(qg, k.float().transpose(-1, -2)).mul_(scale).view(B, Hkv, G, Sq, Sk)
        softcap_scores(scores, softcap)
        probs = masked_softmax(scores, q_pos, n_valid, mask_mod, kv_idx)
        out = torch.matmul(probs.view(B, Hkv, G * Sq, Sk), v.float())  # [B,Hkv,G*Sq,Dv]
        return out.view(B, Hq, Sq, v.shape[-1])
    qg = q.float().reshape(B, Hkv, G, Sq, D)
    scores = torch.matmul(qg, k.float()[:, :, None].transpose(-1, -2)).mul_(scale)  # [B,Hkv,G,Sq,Sk]
    softcap_scores(scores, softcap)
    return masked_softmax_v(scores, q_pos, n_valid, mask_mod, kv_idx, v)


def masked_softmax(scores, q_pos, n_valid, mask_mod, kv_idx):
    """softmax(scores + mask) in place for fp32 ``scores`` [B, Hkv, G, Sq, K]; see :func:`masked_softmax_v`."""
    allowed = mask_mod(q_pos[:, :, None], kv_idx[None, None, :]) & (kv_idx[None, None, :] < n_valid[:, :, None])
    scores.masked_fill_(~allowed[:, None, None], float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a row with no visible key attends to nothing


def masked_softmax_v(scores, q_pos, n_valid, mask_mod, kv_idx, v):
    """softmax(scores + mask) v in fp32 for fp32 ``scores`` [B, Hkv, G, Sq, K] (modified in place) of
    queries at ``q_pos`` [B, Sq] against keys at ``kv_idx`` [K], of which those >= ``n_valid`` [B, 1]
    are never read; ``v`` [B, Hkv, K, Dv] -> [B, Hkv * G, Sq, Dv]."""
    B, Hkv, G, Sq, _ = scores.shape
    probs = masked_softmax(scores, q_pos, n_valid, mask_mod, kv_idx)
    out = torch.matmul(probs, v.float()[:, :, None])  # [B,Hkv,G,Sq,Dv]
    return out.reshape(B, Hkv * G, Sq, v.shape[-1])


def row_chunk(B: int, Hq: int, Sq: int, Sk: int, skip_keys: bool = True) -> int:
    """Query rows per chunk: one chunk's fp32 score matrix under CHUNK_BYTES; with key skipping, also
    enough chunks (8, at most 1024 rows each) that causal skipping pays."""
    chunk = max(16, CHUNK_BYTES // max(1, 4 * B * Hq * Sk))
    return min(chunk, max(16, -(-Sq // 8)), 1024) if skip_keys else chunk


def attention_reference(q, k, v, kv_len=None, scale=None, mask="causal", softcap=0.0):
    """The oracle: the whole score matrix at once, computed in fp32, cast to q's dtype.

    ``softcap`` > 0 caps the scaled scores at +-softcap (``tanh(s / softcap) * softcap``) before the mask."""
    B, Hq, Sq, D = q.shape
    scale = D**-0.5 if scale is None else scale
    q_pos, n = _positions(kv_len, B, Sq, k.shape[2], q.device)
    out = _attend_rows(q, k, v, q_pos, n, scale, MaskSpec.parse(mask).mask_mod(), softcap=softcap)
    return out.to(q.dtype)


def gather_keys(k, v, ranges):
    """Keys and values of the given intervals, plus their absolute positions; slices when contiguous."""
    if len(ranges) == 1:
        lo, hi = ranges[0]
        return k[:, :, lo:hi], v[:, :, lo:hi], torch.arange(lo, hi, device=k.device)
    idx = torch.cat([torch.arange(lo, hi, device=k.device) for lo, hi in ranges])
    return k.index_select(2, idx), v.index_select(2, idx), idx


def attention_chunked(q, k, v, kv_len=None, scale=None, mask="causal", chunk=0, skip_keys=True, softcap=0.0):
    """Lazy softmax over query chunks (Rabe & Staats 2021): memory O(chunk * Sk), same math per row.

    With ``skip_keys`` each chunk reads only the key intervals its mask can see
    (``MaskSpec.key_ranges``), so causal prefill does half the work of the full matrix and a
    sliding window O(window) per row.  Without it every row reads all valid keys (``[0, kv_len)``,
    never the unfilled rest of a cache), the GEMM shapes of transformers' eager attention, which
    keeps the canonical program bit-identical to it.
    """
    B, Hq, Sq, D = q.shape
    Sk = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    if chunk <= 0:
        chunk = row_chunk(B, Hq, Sq, Sk, skip_keys)
    q_pos, n = _positions(kv_len, B, Sq, Sk, q.device)
    spec = MaskSpec.parse(mask)
    mask_mod = spec.mask_mod()
    out = q.new_empty(B, Hq, Sq, v.shape[-1])
    n_max = int(n.max())
    for s in range(0, Sq, chunk):
        e = min(Sq, s + chunk)
        qp = q_pos[:, s:e]
        if skip_keys:
            ranges = spec.key_ranges(int(qp.min()), int(qp.max()), min(Sk, n_max))
        else:
            ranges = [(0, min(Sk, n_max))] if n_max > 0 else []
        if not ranges:
            out[:, :, s:e] = 0
            continue
        ks, vs, idx = gather_keys(k, v, ranges)
        rows = _attend_rows(q[:, :, s:e], ks, vs, qp, n, scale, mask_mod, idx, grouped=skip_keys, softcap=softcap)
        out[:, :, s:e] = rows.to(q.dtype)
    return out


def _causal_suffix_cpu(q, k, v, scale):
    """Causal attention of Sq queries that are the last Sq of Sk > Sq keys (a context-parallel rank's chunk,
    a prompt chunk after a prefix): the prefix keys [0, Sk - Sq) are all visible, the last Sq causal.

    Two calls of PyTorch's fused CPU flash kernel, one unmasked over the prefix and one causal over the
    diagonal block, merged by their log-sum-exp: 1.4x faster on one thread than SDPA with the materialised
    lower-right mask (2k queries x 8k keys, smollm2's heads: 0.37 s against 0.52 s; the masked kernel
    computes the diagonal block's upper triangle too), 4.3x faster than the chunked path (1.63 s).  The
    kernel that returns the log-sum-exp is ATen's ``_scaled_dot_product_flash_attention_for_cpu``, the one
    SDPA itself dispatches to on the CPU; where a torch lacks it, SDPA with ``causal_lower_right``.
    """
    B, Hq, Sq, D = q.shape
    Sk = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if flash is None or q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64, torch.bfloat16,
                                                                  torch.float16):
        from torch.nn.attention.bias import causal_lower_right

        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=causal_lower_right(Sq, Sk), scale=scale, enable_gqa=Hq != k.shape[1])
    if Hq != k.shape[1]:  # the fused CPU kernel takes equal heads; SDPA's enable_gqa expands the same way
        k = k.repeat_interleave(Hq // k.shape[1], 1)
        v = v.repeat_interleave(Hq // v.shape[1], 1)
    P = Sk - Sq
    o1, l1 = flash(q, k[:, :, :P], v[:, :, :P], 0.0, False, scale=scale)[:2]
    o2, l2 = flash(q, k[:, :, P:], v[:, :, P:], 0.0, True, scale=scale)[:2]
    lse = torch.logaddexp(l1, l2)
    out = o1.float() * torch.exp(l1 - lse)[..., None] + o2.float() * torch.exp(l2 - lse)[..., None]
    return out.to(q.dtype)


def attention_flash_cpu(q, k, v, kv_len=None, scale=None, mask="causal", softcap=0.0):
    """IO-aware attention on the CPU: PyTorch's fused SDPA kernel (tiled online softmax) for causal
    prefill without soft-capping (SDPA has none), also when the queries are the last Sq of more keys
    (:func:`_causal_suffix_cpu`), the key-skipping chunked path for everything else."""
    gqa = q.shape[1] != k.shape[1]
    if mask == "causal" and kv_len is None and q.shape[2] == k.shape[2] and not softcap:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), is_causal=True, scale=scale, enable_gqa=gqa)
    if mask == "causal" and kv_len is None and q.shape[2] < k.shape[2] and not softcap:
        return _causal_suffix_cpu(q, k.to(q.dtype), v.to(q.dtype), scale)
    if mask == "causal" and q.shape[2] == 1 and kv_len is not None and kv_len.numel() == 1 and not softcap:
        # decode: the one query (the last position) sees exactly the filled keys [0, kv_len): one unmasked fused
        # call on that slice, where the chunked path runs a dozen small ops per layer and step
        n = min(int(kv_len), k.shape[2])
        if n > 0:
            return torch.nn.functional.scaled_dot_product_attention(
                q, k[:, :, :n].to(q.dtype), v[:, :, :n].to(q.dtype), scale=scale, enable_gqa=gqa)
    return attention_chunked(q, k, v, kv_len, scale, mask, softcap=softcap)


def parse_algo(algo: str) -> tuple[str, dict[str, int]]:
    """``"chunked:chunk=512"`` -> ``("chunked", {"chunk": 512})``: the implementation name and its integer options."""
    name, _, rest = algo.partition(":")
    args = {}
    for item in filter(None, rest.split(",")):
        key, _, val = item.partition("=")
        args[key] = int(val)
    return name, args


@torch.library.custom_op("lcc::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_len: torch.Tensor | None,
    scale: float,
    mask: str = "causal",
    algo: str = "auto",
    softcap: float = 0.0,
) -> torch.Tensor:
    if torch.compiler.is_compiling():
        # traced as a decomposition (a backend exporting this body for a node it cannot lower): the reference,
        # whose arithmetic has no data-dependent sizes (the chunked paths read kv_len and loop over rows)
        return attention_reference(q, k, v, kv_len, scale, mask, softcap)
    name, args = parse_algo(algo)
    call = (q, k, v, kv_len, scale, mask)
    impl = registry.select("attention", name, q.device.type, *call) or registry.select("attention", "chunked", "*")
    if softcap:
        # a kernel Impl a backend registered is not known to pass the soft-cap on: this module's implementation
        if impl.source != __name__:
            impl = registry.select("attention", name, "*", *call) or registry.select("attention", "chunked", "*")
        args["softcap"] = softcap
    return impl.fn(*call, **args)


@attention.register_fake
def _(q, k, v, kv_len, scale, mask="causal", algo="auto", softcap=0.0):
    torch._check(q.shape[1] % k.shape[1] == 0)
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


def attention_cost(B, Hq, Hkv, Sq, Sk, D, Dv, mask: str, itemsize: int = 4):
    """FLOPs, bytes moved and bytes held (working set) as sympy expressions.

    FLOPs count 2*D for q.k and 2*Dv for p.v per kept (query, key) pair; bytes moved
    are q, k, v read and the output written once (an IO-aware kernel's traffic).
    """
    pairs = mask_pairs(mask, Sq, Sk)
    flops = pairs * B * Hq * (2 * D + 2 * Dv)
    moved = itemsize * B * (Hq * Sq * D + Hkv * Sk * (D + Dv) + Hq * Sq * Dv)
    held = itemsize * B * Hq * Sq * Dv
    return flops, moved, held


registry.declare(registry.OpDef(
    name="attention",
    op=torch.ops.lcc.attention.default,
    reference=attention_reference,
    cost=attention_cost,
    doc="softmax(softcap(q k^T * scale), mask) v; GQA native; queries aligned to the end of the keys; "
        "softcap > 0: tanh(s / softcap) * softcap (Gemma 2)",
))


def _auto(q, k, v, kv_len, scale, mask, softcap=0.0, **_):
    """Eager-identical arithmetic (the GEMM shapes of transformers' eager attention), memory bounded by row chunks."""
    return attention_chunked(q, k, v, kv_len, scale, mask, skip_keys=False, softcap=softcap)


# The pure-torch implementations, on any device; an unknown algo name runs "chunked". Kernels add theirs.
for _impl in (registry.Impl("reference", "*", lambda q, k, v, kv_len, scale, mask, softcap=0.0, **_:
                            attention_reference(q, k, v, kv_len, scale, mask, softcap), source=__name__),
              registry.Impl("auto", "*", _auto, source=__name__),
              registry.Impl("flash", "*", lambda q, k, v, kv_len, scale, mask, softcap=0.0, **_:
                            attention_flash_cpu(q, k, v, kv_len, scale, mask, softcap), source=__name__),
              registry.Impl("chunked", "*", lambda q, k, v, kv_len, scale, mask, chunk=0, softcap=0.0, **_:
                            attention_chunked(q, k, v, kv_len, scale, mask, chunk=chunk, softcap=softcap),
                            source=__name__)):
    registry.register_impl("attention", _impl)

__all__ = ["attention", "attention_reference", "attention_chunked", "parse_algo", "gather_keys", "CHUNK_BYTES",
           "attention_cost", "softcap_scores", "mask_pairs", "math"]
