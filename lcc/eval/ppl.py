"""Perplexity on long real text in non-overlapping windows of a given length."""

from __future__ import annotations

import math

import torch

from lcc.errors import UsageError


def windows(token_ids: list[int], length: int, count: int) -> list[list[int]]:
    """Up to ``count`` non-overlapping windows of exactly ``length`` tokens, from the start of the text."""
    n = min(count, len(token_ids) // length)
    if n == 0:
        raise UsageError(f"the text has {len(token_ids)} tokens, fewer than one window of {length}: give a longer --text")
    return [token_ids[i * length:(i + 1) * length] for i in range(n)]


@torch.inference_mode()
def window_nll(program, ids: list[int], chunk: int = 1024) -> tuple[float, int]:
    """Sum of next-token NLL over the window (every position but the last predicts the next) and the count."""
    from lcc.runtime import device_of

    dev = device_of(program)
    x = torch.tensor([ids], device=dev)
    logits = program.entries["prefill_logits"](x, *program.cache.empty(dev))[0][0]
    targets = x[0, 1:]
    total = 0.0
    for s in range(0, targets.shape[0], chunk):
        lp = torch.log_softmax(logits[s:s + chunk].double(), -1)
        total -= float(lp.gather(-1, targets[s:s + chunk, None]).sum())
    return total, int(targets.shape[0])


def perplexity(program, token_ids: list[int], length: int, count: int) -> tuple[float, int]:
    total, n = 0.0, 0
    for w in windows(token_ids, length, count):
        t, c = window_nll(program, w)
        total, n = total + t, n + c
    return math.exp(total / n), n
