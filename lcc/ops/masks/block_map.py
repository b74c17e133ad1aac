"""Block maps of a mask: which (query block, key block) tiles a kernel must visit, from the predicate."""

from __future__ import annotations

import functools

import torch

from lcc.ops.masks.kind import MaskSpec


@functools.lru_cache(maxsize=64)
def block_map(mask: str, q_len: int, kv_len: int, block_m: int, block_n: int, device: str = "cpu",
              max_elems: int = 1 << 24):
    """(any, full): [cdiv(q_len, block_m), cdiv(kv_len, block_n)] bool maps of query x key tiles.

    ``any`` marks tiles holding at least one allowed (valid query, valid key) pair, ``full``
    tiles whose every pair is allowed and every key valid (< kv_len), so a kernel may skip
    masking there.  Evaluates the mask's predicate on every pair, a few query blocks at a time.
    """
    mod = MaskSpec.parse(mask).mask_mod()
    n_m, n_n = -(-q_len // block_m), -(-kv_len // block_n)
    kv = torch.arange(n_n * block_n, device=device)
    kv_ok = kv < kv_len
    any_map = torch.zeros(n_m, n_n, dtype=torch.bool, device=device)
    full_map = torch.zeros_like(any_map)
    step = max(1, max_elems // (block_m * n_n * block_n))
    for m0 in range(0, n_m, step):
        m1 = min(n_m, m0 + step)
        i = torch.arange(m0 * block_m, m1 * block_m, device=device)
        q = kv_len - q_len + i
        allowed = (mod(q[:, None], kv[None, :]) & kv_ok[None, :]).expand(len(i), len(kv))
        allowed = allowed.reshape(m1 - m0, block_m, n_n, block_n)
        q_ok = (i < q_len).reshape(m1 - m0, block_m, 1, 1)
        any_map[m0:m1] = (allowed & q_ok).any(3).any(1)
        full_map[m0:m1] = (allowed | ~q_ok).all(3).all(1)
    return any_map, full_map
