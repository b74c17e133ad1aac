"""The position maps of ``lcc.rerope_attention``: where query i and key j sit, per branch, for each kind.

Every kind scores a pair (i, j) as plain RoPE between a query position and a key position
that depend on which *branch* the pair falls in; a branch is one score matrix of the
paper's naive form (one rotation of q, one of k).  i is the query's position, j the key's
index in the cache (its original position); all maps are elementwise tensor arithmetic, so
the reference, the CPU path and the exported (ONNX) graph share them.

``rerope`` (Su 2023, "Rectified Rotary Position Embeddings", kexue.fm/archives/9708), with
``leaky_factor`` f (0: ReRoPE, 1/k: Leaky ReRoPE), window w; relative position r = i - j:

    branch 0, r < w:   (i, j)                        rel = r
    branch 1, r >= w:  (w + f (i - w), f j)          rel = w + f (r - w)

``self-extend`` (Jin et al. 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window Without
Tuning", arXiv 2401.01325, Sec. 3 and datamllab/LongLM ``self_extend_forward``), neighbour
window W = ``window``, group size G = ``group``:

    branch 0, r < W:   (i, j)                              neighbour attention
    branch 1, r >= W:  (i // G + W - W // G, j // G)       grouped attention, shifted by
                                                           W - W // G so it meets the window's edge

``dca`` (An et al. 2024, "Training-Free Long-Context Scaling of Large Language Models",
arXiv 2402.17463, Sec. 3; HKUNLP/ChunkLlama ``chunkllama_attn_replace.py``), with the
reference code's ``chunk_size`` s = ``chunk_size`` and ``local_window`` w = ``window``: keys and
queries are cut into chunks of n = s - w positions (the code's ``chunk_len``); every key sits
at j mod n, and a query's position depends on the key's chunk (the code's ``q_t``, ``qc_t``):

    branch 0, intra        (i // n == j // n):      (i mod n, j mod n)
    branch 1, successive   (i // n == j // n + 1):  (min(i mod n + n, s), j mod n)
    branch 2, inter        (i // n >= j // n + 2):  (min(2 n - 1, s), j mod n)

(the inter-chunk query position is the code's ``qc_t[chunk_len - 1]``: s whenever w < n).
All relative positions stay <= s, so s below the trained length keeps them trained.
"""

from __future__ import annotations

import torch

KINDS = ("rerope", "self-extend", "dca")
BRANCHES = {"rerope": 2, "self-extend": 2, "dca": 3}  # score matrices per kind


def check(kind: str, window: int, leaky_factor: float, group: int, chunk_size: int) -> None:
    """ValueError naming the bad parameter (the passes check their own spellings before this)."""
    if kind not in KINDS:
        raise ValueError(f"remapped attention: kind {kind!r} is not one of {', '.join(KINDS)}")
    if window < 0:
        raise ValueError(f"remapped attention: window={window} must be >= 0")
    if kind == "self-extend" and group < 1:
        raise ValueError(f"self-extend: group={group} must be >= 1")
    if kind == "dca" and not 0 <= window < chunk_size:
        raise ValueError(f"dca: local window {window} must be >= 0 and below the chunk size {chunk_size}")


def _floordiv(x: torch.Tensor, n: int) -> torch.Tensor:
    """x // n with n as a tensor of x's dtype (TVM's frontend will not divide int64 by an int32 constant)."""
    return x // torch.full_like(x, n)


def positions(kind: str, q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, leaky_factor: float,
              group: int, chunk_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per branch, (query positions shaped as ``q_pos``, key positions shaped as ``k_pos``).

    ReRoPE's rectified positions are fp32 (as the kernels compute them); the others stay integers.
    """
    if kind == "rerope":
        return [(q_pos, k_pos), (window + leaky_factor * (q_pos.float() - window), leaky_factor * k_pos.float())]
    if kind == "self-extend":
        return [(q_pos, k_pos), (_floordiv(q_pos, group) + (window - window // group), _floordiv(k_pos, group))]
    n = chunk_size - window
    local = q_pos - _floordiv(q_pos, n) * n
    key = k_pos - _floordiv(k_pos, n) * n
    return [(local, key), ((local + n).clamp(0, chunk_size), key),  # both bounds: TVM casts a missing one (inf)
            (torch.full_like(q_pos, min(2 * n - 1, chunk_size)), key)]


def branch(kind: str, qp: torch.Tensor, kp: torch.Tensor, window: int, chunk_size: int) -> torch.Tensor:
    """The branch index (int64) of each pair, broadcasting query positions ``qp`` against key positions ``kp``."""
    if kind == "dca":
        n = chunk_size - window
        back = _floordiv(qp, n) - _floordiv(kp, n)  # chunks between the query's and the key's
        return back.clamp(0, 2)
    return ((qp - kp) >= window).long()


def key_spans(kind: str, lo: int, hi: int, window: int, chunk_size: int) -> list[tuple[int, int]]:
    """Per branch, the key positions [start, end) that queries at positions lo..hi may score with it.

    A key outside a branch's span is scored by another branch for every one of those queries, so
    the CPU path and the kernels compute each branch only over its span (end may be unbounded).
    """
    big = 1 << 62
    if kind == "dca":
        n = chunk_size - window
        first, last = lo // n, hi // n
        return [(first * n, big), ((first - 1) * n, last * n), (0, (last - 1) * n)]
    return [(lo - window + 1, big), (0, hi - window + 1)]


__all__ = ["KINDS", "BRANCHES", "check", "positions", "branch", "key_spans"]
