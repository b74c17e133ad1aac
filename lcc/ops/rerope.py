"""``lcc.rerope_attention``: causal attention under ReRoPE / Leaky ReRoPE (Su 2023), rotation included.

ReRoPE ("Rectified Rotary Position Embeddings", kexue.fm/archives/9708) keeps RoPE's
relative position r = p_i - p_j inside a window w and rectifies it outside:

    rel(r) = r                          if r < w
    rel(r) = w + (r - w) * leaky_factor otherwise

leaky_factor = 0 is ReRoPE (positions clamp at w), 1/k is Leaky ReRoPE's slope 1/k.
The score is q_i^T R(rel(r)) k_j * scale, R the rotate-half rotation of ``lcc.rope``
(cos and sin scaled by ``attention_scaling`` on the first R = 2 len(inv_freq) channels;
the rest pass through).  q [B, Hq, Sq, D] and k [B, Hkv, Sk, D] come un-rotated: the op
owns the rotation.  Queries sit at ``positions`` [B, Sq] (None: kv_len - Sq + i, as
``lcc.attention``), key j at position j; keys at j >= kv_len are never read; ``mask``
is a spec string of :mod:`lcc.ops.masks` over the same positions; GQA as ``lcc.attention``.

Since rel(r) is affine in p_i and p_j on each side of the window, each side is a plain
RoPE score (the paper's naive form, two score matrices):

    s1 = <rope(q_i, p_i), rope(k_j, p_j)>                                  where r < w
    s2 = <rope(q_i, w + leaky_factor (p_i - w)), rope(k_j, leaky_factor p_j)>  where r >= w

``rerope_reference`` computes both matrices in full (the oracle, ``algo="reference"``); the
CPU default ``rerope_chunked`` scores each side only where some query of a chunk needs it
(about 3.5x faster at 4k); on CUDA the fused Triton kernel (``lcc.backends.triton.rerope``).
"""

from __future__ import annotations

import torch

from lcc.ops import registry
from lcc.ops.attention import gather_keys, mask_pairs, masked_softmax_v, row_chunk
from lcc.ops.masks import MaskSpec
from lcc.ops.rope import rope_reference

_CHUNK_BYTES = 256 * 1024 * 1024  # per query-row chunk of the reference (two fp32 score matrices)


def query_positions(positions, kv_len, B, Sq, Sk, device):
    """Query positions [B, Sq] (int64) and the number of valid keys [B, 1]."""
    if kv_len is None:
        n = torch.full((B, 1), Sk, device=device, dtype=torch.long)
    else:
        n = kv_len.to(device=device, dtype=torch.long).reshape(-1, 1).expand(B, 1)
    if positions is None:
        return n - Sq + torch.arange(Sq, device=device)[None, :], n
    return positions.to(device=device, dtype=torch.long).expand(B, Sq), n


def rectified_positions(p, window, leaky_factor):
    """Where query and key sit for the out-of-window score: (w + f (p - w), f p), fp32 as the kernels do."""
    p = p.float()
    return window + leaky_factor * (p - window), leaky_factor * p


def _scores(q, k, scale):
    """fp32 q k^T * scale, GQA: [B, Hkv, G, Sq, Sk]."""
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    return torch.matmul(q.float().reshape(B, Hkv, Hq // Hkv, Sq, D), k.float()[:, :, None].transpose(-1, -2)) * scale


def rerope_reference(q, k, v, positions=None, inv_freq=None, attention_scaling=1.0, kv_len=None, scale=None,
                     window=512, leaky_factor=0.0, mask="causal"):
    """The oracle: the two score matrices of the paper's naive form, selected per pair, fp32 softmax."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = D**-0.5 if scale is None else scale
    q_pos, n = query_positions(positions, kv_len, B, Sq, Sk, q.device)
    k_pos = torch.arange(Sk, device=q.device).expand(B, Sk)
    q_out = rectified_positions(q_pos, window, leaky_factor)[0]
    k_out = rectified_positions(k_pos, window, leaky_factor)[1]
    k1 = rope_reference(k, k_pos, inv_freq, attention_scaling)
    k2 = rope_reference(k, k_out, inv_freq, attention_scaling)
    mask_mod = MaskSpec.parse(mask).mask_mod()
    kv_idx = torch.arange(Sk, device=q.device)
    out = q.new_empty(B, Hq, Sq, Dv)
    chunk = max(16, _CHUNK_BYTES // max(1, 8 * B * Hq * Sk))
    for s in range(0, Sq, chunk):
        rows = slice(s, min(Sq, s + chunk))
        qp = q_pos[:, rows]
        s1 = _scores(rope_reference(q[:, :, rows], qp, inv_freq, attention_scaling), k1, scale)
        s2 = _scores(rope_reference(q[:, :, rows], q_out[:, rows], inv_freq, attention_scaling), k2, scale)
        inside = (qp[:, :, None] - kv_idx) < window  # [B, rows, Sk]
        scores = torch.where(inside[:, None, None], s1, s2)
        out[:, :, rows] = masked_softmax_v(scores, qp, n, mask_mod, kv_idx, v).to(q.dtype)
    return out


def rerope_chunked(q, k, v, positions=None, inv_freq=None, attention_scaling=1.0, kv_len=None, scale=None,
                   window=512, leaky_factor=0.0, mask="causal", chunk=0):
    """The same math over query chunks that compute only the scores they need (the CPU default).

    A chunk of queries at positions qmin..qmax reads only the key intervals its mask can see
    (causal prefill: half the pairs), and of those it scores keys at j <= qmin - w only out of
    the window, keys at j > qmax - w only inside it, and both forms only for the ~chunk keys in
    between: about one score matrix of work instead of the reference's two full ones.
    """
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = D**-0.5 if scale is None else scale
    chunk = chunk if chunk > 0 else row_chunk(B, Hq, Sq, Sk)
    q_pos, n = query_positions(positions, kv_len, B, Sq, Sk, q.device)
    k_pos = torch.arange(Sk, device=q.device).expand(B, Sk)
    q_out = rectified_positions(q_pos, window, leaky_factor)[0]
    # keys rotated both ways side by side [.., :D | D:], so a chunk gathers them once (a view for one interval)
    k_out = rectified_positions(k_pos, window, leaky_factor)[1]
    k12 = torch.cat([rope_reference(k, k_pos, inv_freq, attention_scaling),
                     rope_reference(k, k_out, inv_freq, attention_scaling)], -1)
    spec = MaskSpec.parse(mask)
    mask_mod = spec.mask_mod()
    n_max = min(Sk, int(n.max()))
    out = q.new_empty(B, Hq, Sq, Dv)
    for s in range(0, Sq, chunk):
        rows = slice(s, min(Sq, s + chunk))
        qp = q_pos[:, rows]
        lo, hi = int(qp.min()), int(qp.max())
        ranges = spec.key_ranges(lo, hi, n_max)
        if not ranges:
            out[:, :, rows] = 0
            continue
        ks, vs, idx = gather_keys(k12, v, ranges)
        a = int(torch.searchsorted(idx, lo - window, right=True))  # keys before a: out of the window for all
        b = int(torch.searchsorted(idx, hi - window, right=True))  # keys from b on: inside it for all
        scores = q.new_empty(B, Hkv, Hq // Hkv, qp.shape[1], idx.numel(), dtype=torch.float32)
        if b > 0:
            q2 = rope_reference(q[:, :, rows], q_out[:, rows], inv_freq, attention_scaling)
            scores[..., :b] = _scores(q2, ks[:, :, :b, D:], scale)
        if a < idx.numel():
            q1 = rope_reference(q[:, :, rows], qp, inv_freq, attention_scaling)
            near = _scores(q1, ks[:, :, a:, :D], scale)
            if a < b:
                inside = (qp[:, :, None] - idx[a:b]) < window  # [B, rows, b - a]
                near[..., :b - a] = torch.where(inside[:, None, None], near[..., :b - a], scores[..., a:b])
            scores[..., a:] = near
        out[:, :, rows] = masked_softmax_v(scores, qp, n, mask_mod, idx, vs).to(q.dtype)
    return out


@torch.library.custom_op("lcc::rerope_attention", mutates_args=())
def rerope_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None,
    inv_freq: torch.Tensor,
    attention_scaling: float,
    kv_len: torch.Tensor | None,
    scale: float,
    window: int,
    leaky_factor: float = 0.0,
    mask: str = "causal",
    algo: str = "auto",
) -> torch.Tensor:
    call = (q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor, mask)
    impl = (registry.select("rerope_attention", algo, q.device.type, *call)
            or registry.select("rerope_attention", "chunked", "*"))
    return impl.fn(*call)


@rerope_attention.register_fake
def _(q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor=0.0, mask="causal",
      algo="auto"):
    torch._check(q.shape[1] % k.shape[1] == 0)
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


def rerope_attention_cost(B, Hq, Hkv, Sq, Sk, D, Dv, R, window, mask: str = "causal", itemsize: int = 4):
    """FLOPs, bytes moved and bytes held (sympy).

    Each kept pair needs one q.k (2D: the in-window or the rectified score) and one p.v
    (2Dv); the fused kernel's second product on its edge tiles (BLOCK_M + BLOCK_N keys per
    query) is left out.  Rotations: q twice and k twice, 3 FLOPs per rotated channel plus
    cos and sin.  Traffic is an IO-aware kernel's: q, k, v read and the output written once.
    ``window`` does not change the count; it is taken for the signature's sake.
    """
    pairs = mask_pairs(mask, Sq, Sk)
    rotation = 2 * (3 * R + R) * (B * Hq * Sq + B * Hkv * Sk)
    flops = B * Hq * pairs * (2 * D + 2 * Dv) + rotation
    moved = itemsize * B * (Hq * Sq * D + Hkv * Sk * (D + Dv) + Hq * Sq * Dv)
    held = itemsize * B * Hq * Sq * Dv
    return flops, moved, held


registry.declare(registry.OpDef(
    name="rerope_attention",
    op=torch.ops.lcc.rerope_attention.default,
    reference=rerope_reference,
    cost=rerope_attention_cost,
    doc="attention with ReRoPE / Leaky ReRoPE (Su 2023): RoPE inside a window, rectified position outside",
))
# The pure-torch implementations, on any device; any other algo name runs "chunked". Kernels add theirs.
registry.register_impl("rerope_attention", registry.Impl("chunked", "*", rerope_chunked, source=__name__))
registry.register_impl("rerope_attention", registry.Impl("reference", "*", rerope_reference, source=__name__))

__all__ = ["rerope_attention", "rerope_reference", "rerope_chunked", "rerope_attention_cost", "rectified_positions",
           "query_positions"]
