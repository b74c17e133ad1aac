"""``lcc.rerope_attention``: causal attention with remapped relative positions, rotation included.

One op for the attention whose relative position between query i and key j is mapped
piecewise (the mapping kinds of :mod:`lcc.ops.remap`): ``rerope`` (Su 2023, ReRoPE and Leaky
ReRoPE: clamped or slowed past a window), ``self-extend`` (Jin et al. 2024: grouped positions
past a neighbour window) and ``dca`` (An et al. 2024, Dual Chunk Attention: intra-, successive-
and inter-chunk positions).  Each kind is a few branches, each branch one plain RoPE score
matrix (q rotated to the branch's query positions, k to its key positions); a pair takes the
score of its branch and one softmax runs over the row.  For ReRoPE (Su's naive form):

    s1 = <rope(q_i, p_i), rope(k_j, p_j)>                                      where r < w
    s2 = <rope(q_i, w + leaky_factor (p_i - w)), rope(k_j, leaky_factor p_j)>  where r >= w

The score is q^T R(rel) k * scale, R the rotate-half rotation of ``lcc.rope`` (cos and sin
scaled by ``attention_scaling`` on the first R = 2 len(inv_freq) channels; the rest pass
through).  q [B, Hq, Sq, D] and k [B, Hkv, Sk, D] come un-rotated: the op owns the rotation,
so a KV cache holds un-rotated keys.  Queries sit at ``positions`` [B, Sq] (None: kv_len - Sq
+ i, as ``lcc.attention``), key j at position j; keys at j >= kv_len are never read; ``mask``
is a spec string of :mod:`lcc.ops.masks` over the same positions; GQA as ``lcc.attention``.
``window`` is ReRoPE's w, Self-Extend's neighbour window W, DCA's local window; ``group`` is
Self-Extend's G; ``chunk_size`` is DCA's chunk size (the chunk length is chunk_size - window).

``rerope_reference`` computes every branch's matrix in full (the oracle, ``algo="reference"``);
the CPU default ``rerope_chunked`` scores each branch only over the keys some query of a
chunk needs it for, and for causal masks runs those key runs through PyTorch's fused flash
kernel merged by log-sum-exp (1.0-1.6x plain flash attention's time at 4k and 16k, against
3-6x for scoring every chunk pair by pair: bench/remap_cpu.py), which also serves decode (one
query against the cache); on CUDA the fused Triton kernels (``lcc.backends.triton.rerope``).
"""

from __future__ import annotations

import sympy
import torch

from lcc.ops import registry, remap
from lcc.ops.attention import gather_keys, mask_pairs, masked_softmax_v, row_chunk
from lcc.ops.masks import MaskSpec
from lcc.ops.rope import rope_reference

_CHUNK_BYTES = 256 * 1024 * 1024  # per query-row chunk of the reference (its fp32 score matrices)


def query_positions(positions, kv_len, B, Sq, Sk, device):
    """Query positions [B, Sq] (int64) and the number of valid keys [B, 1]."""
    if kv_len is None:
        n = torch.full((B, 1), Sk, device=device, dtype=torch.long)
    else:
        n = kv_len.to(device=device, dtype=torch.long).reshape(-1, 1).expand(B, 1)
    if positions is None:
        return n - Sq + torch.arange(Sq, device=device)[None, :], n
    return positions.to(device=device, dtype=torch.long).expand(B, Sq), n


def _scores(q, k, scale):
    """fp32 q k^T * scale, GQA: [B, Hkv, G, Sq, Sk]."""
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    return torch.matmul(q.float().reshape(B, Hkv, Hq // Hkv, Sq, D), k.float()[:, :, None].transpose(-1, -2)) * scale


def _rotated_keys(k, k_branches, inv_freq, attention_scaling):
    """Keys rotated once per distinct key-position tensor (DCA's three branches share one): (tensors, slot per
    branch).  Identity, not value, decides, so tracing sees no data-dependent branch."""
    keys, slots, seen = [], [], []
    for kp in k_branches:
        same = [n for n, other in enumerate(seen) if other is kp]
        if not same:
            seen.append(kp)
            keys.append(rope_reference(k, kp, inv_freq, attention_scaling))
        slots.append(same[0] if same else len(keys) - 1)
    return keys, slots


def rerope_reference(q, k, v, positions=None, inv_freq=None, attention_scaling=1.0, kv_len=None, scale=None,
                     window=512, leaky_factor=0.0, mask="causal", kind="rerope", group=1, chunk_size=0):
    """The oracle: every branch's full score matrix (the papers' naive form), selected per pair, fp32 softmax."""
    remap.check(kind, window, leaky_factor, group, chunk_size)
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = D**-0.5 if scale is None else scale
    q_pos, n = query_positions(positions, kv_len, B, Sq, Sk, q.device)
    k_pos = torch.arange(Sk, device=q.device).expand(B, Sk)
    maps = remap.positions(kind, q_pos, k_pos, window, leaky_factor, group, chunk_size)
    keys, slots = _rotated_keys(k, [kp for _, kp in maps], inv_freq, attention_scaling)
    mask_mod = MaskSpec.parse(mask).mask_mod()
    kv_idx = torch.arange(Sk, device=q.device)
    out = q.new_empty(B, Hq, Sq, Dv)
    chunk = max(16, _CHUNK_BYTES // max(1, 4 * len(maps) * B * Hq * Sk))
    for s in range(0, Sq, chunk):
        rows = slice(s, min(Sq, s + chunk))
        qp = q_pos[:, rows]
        which = remap.branch(kind, qp[:, :, None], kv_idx, window, chunk_size)[:, None, None]  # [B,1,1,rows,Sk]
        scores = None
        for (qb, _), slot, index in zip(maps, slots, range(len(maps))):
            sb = _scores(rope_reference(q[:, :, rows], qb[:, rows], inv_freq, attention_scaling), keys[slot], scale)
            scores = sb if scores is None else torch.where(which == index, sb, scores)
        out[:, :, rows] = masked_softmax_v(scores, qp, n, mask_mod, kv_idx, v).to(q.dtype)
    return out


RUN_ROWS = 256  # queries per chunk of the causal path; at a window edge each scores ~RUN_ROWS keys under a mask


def _flash_lse(q, k, v, scale, allowed=None, causal=False):
    """softmax(q k^T * scale) v and each row's log-sum-exp [B, Hq, Sq], by PyTorch's fused CPU flash kernel
    (the one ``scaled_dot_product_attention`` runs, called directly for its log-sum-exp), fp32.

    GQA packs a KV head's query heads into rows, so K and V are read as they lie.  ``allowed``
    [Sq, K] (bool) restricts the pairs; a row it leaves empty gets log-sum-exp -inf (the kernel
    itself reports 0 there).  ``causal``: query r sees keys 0..r (a diagonal block, Sq == K; the
    GQA heads then read copies of the block's keys, as packing would break the row order).  The
    kernel wants one head size: the narrower of q.k and v is zero-padded (which changes no score
    and no output channel).
    """
    B, Hq, Sq, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    G = Hq // Hkv
    q, k, v = q.float(), k.float(), v.float()
    if D < Dv:
        q, k = (torch.nn.functional.pad(t, (0, Dv - D)) for t in (q, k))
    elif Dv < D:
        v = torch.nn.functional.pad(v, (0, D - Dv))
    if causal:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), 0.0, True, scale=scale)
        return out[..., :Dv], lse
    bias = None
    if allowed is not None:
        bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf")).repeat(G, 1)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.reshape(B, Hkv, G * Sq, q.shape[-1]), k, v, 0.0, False, attn_mask=bias, scale=scale)
    lse = lse.reshape(B, Hq, Sq)
    if allowed is not None:
        lse = lse.masked_fill(~allowed.any(-1), float("-inf"))
    return out[..., :Dv].reshape(B, Hq, Sq, Dv), lse


def _merge(parts):
    """One softmax over the union of the parts' keys from each part's (output, log-sum-exp)."""
    outs, lses = zip(*parts)
    lse = torch.stack(lses)
    weight = (lse - lse.logsumexp(0)).exp().nan_to_num_(0.0)  # rows with no key at all: 0, as the reference
    return sum(w[..., None] * o for w, o in zip(weight, outs))


def _runs(kind, lo, hi, visible, window, chunk_size):
    """Key intervals of queries lo..hi (causal) as (branch, start, end, diagonal): keys every query scores with
    ``branch`` and sees all of; with ``diagonal``, the block [lo, hi] every query scores with ``branch`` under the
    causal mask; branch None: mixed keys (a branch edge, or a diagonal two branches share), scored pair by pair."""
    spans = [(max(0, a), min(e, hi + 1)) for a, e in remap.key_spans(kind, lo, hi, window, chunk_size)]
    cuts = sorted({max(0, x) for x in (hi + 1, lo, *(x for span in spans for x in span)) if x <= hi + 1} | {0})
    runs = []
    for x, y in zip(cuts, cuts[1:]):
        y = min(y, visible)
        if x >= y:
            continue
        owners = [index for index, (a, e) in enumerate(spans) if a <= x and y <= e]
        diagonal = len(owners) == 1 and (x, y) == (lo, hi + 1)
        which = owners[0] if len(owners) == 1 and (y <= lo or diagonal) else None
        if runs and runs[-1][0] == which and runs[-1][2] == x and not diagonal and not runs[-1][3]:
            runs[-1] = (which, runs[-1][1], y, False)
        else:
            runs.append((which, x, y, diagonal))
    return runs


def _causal_runs(q, k, v, q_pos, n, inv_freq, attention_scaling, scale, window, leaky_factor, kind, group,
                 chunk_size, rows_per_chunk):
    """The causal path for queries at consecutive positions: fused flash calls merged by log-sum-exp.

    Per sequence, each chunk of ``rows_per_chunk`` queries (DCA's cut at its chunk grid, so
    each key chunk is one branch for the whole query chunk) splits its visible keys into runs
    (:func:`_runs`): most keys belong to one branch and are visible to every query of the chunk,
    so one unmasked flash call per run scores them in that branch's rotation, and the causal
    diagonal is one causal call; only the keys at a branch edge (about rows_per_chunk per
    query, ReRoPE and Self-Extend) are scored by each branch under a pair mask.  The work is
    then that of causal flash attention plus the edge, and only the keys some query can see and
    the query rotations some chunk uses are computed (each once, for the whole sequence: few,
    large tensor ops, which matters where torch's threads wait on a busy machine).
    """
    B, Hq, Sq, _ = q.shape
    Sk = k.shape[2]
    out = q.new_zeros(B, Hq, Sq, v.shape[3])
    grid = chunk_size - window if kind == "dca" else 0
    for b in range(B):
        first = int(q_pos[b, 0])
        visible = min(Sk, int(n[b]), first + Sq)  # keys some query sees
        if visible <= 0:
            continue
        qp, kp = q_pos[b:b + 1], torch.arange(visible)[None]
        maps = remap.positions(kind, qp, kp, window, leaky_factor, group, chunk_size)
        keys, slots = _rotated_keys(k[b:b + 1, :, :visible], [p for _, p in maps], inv_freq, attention_scaling)
        vb = v[b:b + 1, :, :visible]
        starts = set(range(0, Sq, rows_per_chunk))
        if grid:
            starts |= {p - first for p in range(-(-max(first, 1) // grid) * grid, first + Sq, grid)}
        bounds = sorted(starts | {Sq})
        rotated = {}

        def queries(index, s, e):  # queries s..e-1 in branch ``index``'s rotation (all rotated when first needed)
            if index not in rotated:
                rotated[index] = rope_reference(q[b:b + 1], maps[index][0], inv_freq, attention_scaling)
            return rotated[index][:, :, s:e]

        for s, e in zip(bounds, bounds[1:]):
            lo, hi = first + s, first + e - 1
            parts = []
            for which, x, y, diagonal in _runs(kind, lo, hi, visible, window, chunk_size):
                if which is not None:
                    key = keys[slots[which]][:, :, x:y]
                    parts.append(_flash_lse(queries(which, s, e), key, vb[:, :, x:y], scale, causal=diagonal))
                    continue
                idx = torch.arange(x, y)
                pair = remap.branch(kind, qp[0, s:e, None], idx, window, chunk_size)
                seen = idx <= qp[0, s:e, None]
                for index in sorted(set(pair[seen].tolist())):
                    key = keys[slots[index]][:, :, x:y]
                    parts.append(_flash_lse(queries(index, s, e), key, vb[:, :, x:y], scale, seen & (pair == index)))
            out[b:b + 1, :, s:e] = _merge(parts).to(q.dtype)
    return out


def rerope_chunked(q, k, v, positions=None, inv_freq=None, attention_scaling=1.0, kv_len=None, scale=None,
                   window=512, leaky_factor=0.0, mask="causal", kind="rerope", group=1, chunk_size=0, chunk=0):
    """The same math over query chunks that compute only the scores they need (the CPU default).

    A chunk of queries at positions qmin..qmax reads only the key intervals its mask can see
    (causal prefill: half the pairs), and scores each branch only over its key span
    (:func:`lcc.ops.remap.key_spans`): for ReRoPE and Self-Extend keys at j <= qmin - w out of
    the window, keys at j > qmax - w inside it, both forms only for the ~chunk keys in between;
    for DCA each key chunk with the one form its distance in chunks gives, both forms only where
    the query chunk straddles a chunk boundary.  About one score matrix of work instead of the
    reference's two or three full ones.  Decode is one chunk of one query: the window's tail
    scored one way, the rest of the cache the other.

    A causal mask over consecutive query positions (prefill, decode, chunked prefill) takes
    :func:`_causal_runs` on the CPU: the same spans, scored by the fused flash kernel instead of
    materialised fp32 score chunks selected and masked pair by pair (which cost 3-6x flash
    attention and made a 16k table on smollm2 take hours); other masks and devices score pair by pair.
    """
    remap.check(kind, window, leaky_factor, group, chunk_size)
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = D**-0.5 if scale is None else scale
    q_pos, n = query_positions(positions, kv_len, B, Sq, Sk, q.device)
    if q.device.type == "cpu" and MaskSpec.parse(mask).kind == "causal" and bool((q_pos.diff(dim=1) == 1).all()):
        return _causal_runs(q, k, v, q_pos, n, inv_freq, attention_scaling, scale, window, leaky_factor, kind, group,
                            chunk_size, chunk or RUN_ROWS)
    chunk = chunk if chunk > 0 else row_chunk(B, Hq, Sq, Sk)
    k_pos = torch.arange(Sk, device=q.device).expand(B, Sk)
    maps = remap.positions(kind, q_pos, k_pos, window, leaky_factor, group, chunk_size)
    keys, slots = _rotated_keys(k, [kp for _, kp in maps], inv_freq, attention_scaling)
    # the key rotations side by side [.., :D | D:2D | ..], so a chunk gathers them once (a view for one interval)
    k_all = keys[0] if len(keys) == 1 else torch.cat(keys, -1)
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
        ks, vs, idx = gather_keys(k_all, v, ranges)
        scores = q.new_empty(B, Hkv, Hq // Hkv, qp.shape[1], idx.numel(), dtype=torch.float32)
        bounds = [(int(torch.searchsorted(idx, first)), int(torch.searchsorted(idx, min(end, n_max))))
                  for first, end in remap.key_spans(kind, lo, hi, window, chunk_size)]
        which = None
        for index, ((qb, _), slot, (a, e)) in enumerate(zip(maps, slots, bounds)):
            if a >= e:
                continue
            qr = rope_reference(q[:, :, rows], qb[:, rows], inv_freq, attention_scaling)
            sb = _scores(qr, ks[:, :, a:e, slot * D:(slot + 1) * D], scale)
            # keys an earlier branch also scored: select pair by pair there (a later branch does the same here)
            shared = [(max(a, a2), min(e, e2)) for a2, e2 in bounds[:index] if max(a, a2) < min(e, e2)]
            if not shared:
                scores[..., a:e] = sb
                continue
            x, y = min(u for u, _ in shared), max(u for _, u in shared)
            scores[..., a:x], scores[..., y:e] = sb[..., :x - a], sb[..., y - a:]
            if which is None:
                which = remap.branch(kind, qp[:, :, None], idx, window, chunk_size)[:, None, None]
            scores[..., x:y] = torch.where(which[..., x:y] == index, sb[..., x - a:y - a], scores[..., x:y])
        out[:, :, rows] = masked_softmax_v(scores, qp, n, mask_mod, idx, vs).to(q.dtype)
    return out


def _grouped_scores(q, k, scale):
    """q k^T * scale in q's dtype (the exported graph keeps the model's dtype), GQA: [B, Hkv, G, Sq, Sk]."""
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    return torch.matmul(q.reshape(B, Hkv, Hq // Hkv, Sq, D), k[:, :, None].transpose(-1, -2)) * scale


def export_unsupported(args: dict) -> str | None:
    """Why a node cannot lower through :func:`rerope_for_export` (ONNX, TVM) and must fall back: a mask
    without a predicate, or mapping parameters the op refuses; None when it can."""
    try:
        MaskSpec.parse(args["mask"])
        remap.check(args["kind"], args["window"], args["leaky_factor"], args["group"], args["chunk_size"])
    except ValueError as e:
        return str(e)
    return None


def rerope_for_export(q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor=0.0,
                      mask="causal", algo="auto", kind="rerope", group=1, chunk_size=0):
    """:func:`rerope_reference` without Python control flow on sizes or data (fp32), for the exporting backends
    (ONNX, TVM): every branch's full score matrix with ``lcc.rope`` rotations (which they lower natively), the
    mask predicate and kv_len as tensor expressions; decode attends over the whole cache under the mask."""
    B, Hq, Sq, D = q.shape
    Sk = k.shape[2]
    kv_idx = torch.arange(Sk, device=q.device)
    n = Sk if kv_len is None else kv_len.reshape(()).to(torch.long)
    if positions is None:
        q_pos = (n - Sq + torch.arange(Sq, device=q.device))[None, :].expand(B, Sq)
    else:
        q_pos = positions.to(torch.long).expand(B, Sq)
    k_pos = kv_idx[None, :].expand(B, Sk)
    rope = torch.ops.lcc.rope
    qp, kp = q_pos[:, :, None], kv_idx[None, None, :]
    which = remap.branch(kind, qp, kp, window, chunk_size)[:, None, None]  # [B, 1, 1, Sq, Sk]
    scores = None
    for index, (qb, kb) in enumerate(remap.positions(kind, q_pos, k_pos, window, leaky_factor, group, chunk_size)):
        sb = _grouped_scores(rope(q, qb, inv_freq, attention_scaling, ""), rope(k, kb, inv_freq, attention_scaling, ""),
                             scale)
        scores = sb if scores is None else torch.where(which == index, sb, scores)
    allowed = MaskSpec.parse(mask).mask_mod()(qp, kp) & (kp < n)
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.matmul(probs, v[:, :, None])
    return out.reshape(B, Hq, Sq, v.shape[-1])


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
    kind: str = "rerope",
    group: int = 1,
    chunk_size: int = 0,
) -> torch.Tensor:
    call = (q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor, mask, kind, group,
            chunk_size)
    impl = (registry.select("rerope_attention", algo, q.device.type, *call)
            or registry.select("rerope_attention", "chunked", "*"))
    return impl.fn(*call)


@rerope_attention.register_fake
def _(q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor=0.0, mask="causal",
      algo="auto", kind="rerope", group=1, chunk_size=0):
    torch._check(q.shape[1] % k.shape[1] == 0)
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


EDGE = 128  # keys per query scored by more than one branch at a branch boundary: the kernels' BLOCK_M + BLOCK_N
DCA_TILE = 64  # keys per tile of the DCA kernels (BLOCK_N): a tile across a chunk boundary makes three q.k products


def rerope_attention_cost(B, Hq, Hkv, Sq, Sk, D, Dv, R, window, mask: str = "causal", itemsize: int = 4,
                          kind: str = "rerope", chunk_size: int = 0):
    """FLOPs, bytes moved and bytes held (sympy), for the kind's real work (the kernels'; the CPU path's is close).

    Each kept pair needs one q.k (2D, in its branch's form) and one p.v (2Dv).  ReRoPE and
    Self-Extend: near the window's edge a block of queries scores a block of keys in both
    forms, about EDGE pairs per query.  DCA: a key tile inside one chunk is one product (each
    row's q rotation selected), a tile across a chunk boundary three, so a query at position p
    pays 2 x DCA_TILE extra keys for each of the p // n chunk boundaries below it (n = chunk_size
    - window; the CPU path cuts its query chunks at those boundaries and pays none).  Rotations:
    q once per branch (two; DCA three), k once per distinct key map (two; DCA one, j mod n for
    all), 3 FLOPs per rotated channel plus cos and sin.  Traffic is an IO-aware kernel's: q, k,
    v read and the output written once.
    """
    branches = remap.BRANCHES[kind]
    key_maps = 1 if kind == "dca" else 2
    pairs = mask_pairs(mask, Sq, Sk)
    if kind == "dca":  # queries at Sk - Sq .. Sk - 1: on average (Sk - Sq / 2) / n - 1/2 boundaries below each
        crossed = sympy.Max(0, (Sk - Sq / 2) / max(1, chunk_size - window) - sympy.Rational(1, 2))
        edge = sympy.Min(2 * DCA_TILE * Sq * crossed, 2 * pairs)
    else:
        edge = sympy.Min(EDGE * Sq, pairs)
    rotation = (3 * R + R) * (branches * B * Hq * Sq + key_maps * B * Hkv * Sk)
    flops = B * Hq * (pairs * (2 * D + 2 * Dv) + edge * 2 * D) + rotation
    moved = itemsize * B * (Hq * Sq * D + Hkv * Sk * (D + Dv) + Hq * Sq * Dv)
    held = itemsize * B * Hq * Sq * Dv
    return flops, moved, held


registry.declare(registry.OpDef(
    name="rerope_attention",
    op=torch.ops.lcc.rerope_attention.default,
    reference=rerope_reference,
    cost=rerope_attention_cost,
    doc="attention with remapped relative positions: ReRoPE / Leaky ReRoPE (Su 2023), Self-Extend (Jin et al. 2024), "
        "Dual Chunk Attention (An et al. 2024); two or three RoPE score matrices, one softmax",
))
# The pure-torch implementations, on any device; any other algo name runs "chunked". Kernels add theirs.
registry.register_impl("rerope_attention", registry.Impl("chunked", "*", rerope_chunked, source=__name__))
registry.register_impl("rerope_attention", registry.Impl("reference", "*", rerope_reference, source=__name__))

__all__ = ["rerope_attention", "rerope_reference", "rerope_chunked", "rerope_for_export", "rerope_attention_cost",
           "query_positions"]
