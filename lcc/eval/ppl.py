"""Perplexity on long real text: the first windows of each length, or the text's final K tokens.

``first-window`` (the default): non-overlapping windows of exactly L tokens from the start of
the text, every position but the last scored.  ``last-K`` (bojone/rerope's ``eval_loss.py``):
the text's last L + 1 tokens, the first L fed, only the final K predictions scored, so every
length is scored on the same K target tokens and more context can only help a method that uses
it.  Below K the window scores all L predictions it has (the text's last L tokens: a suffix of
the targets of longer lengths).  Further windows end K tokens earlier each, the same ends for
every length.  Either way a window feeds exactly L tokens, so an artifact of capacity L takes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lcc.errors import UsageError


@dataclass(frozen=True)
class Window:
    """Tokens fed to the model and the targets of its predictions at positions ``start``, ``start + 1``, ..."""

    inputs: list[int]
    targets: list[int]
    start: int = 0


def protocol_name(last: int) -> str:
    return f"last-{last}" if last else "first-window"


def windows(token_ids: list[int], length: int, count: int) -> list[list[int]]:
    """Up to ``count`` non-overlapping windows of exactly ``length`` tokens, from the start of the text."""
    n = min(count, len(token_ids) // length)
    if n == 0:
        raise UsageError(f"the text has {len(token_ids)} tokens, fewer than one window of {length}: give a longer --text")
    return [token_ids[i * length:(i + 1) * length] for i in range(n)]


def tail_windows(token_ids: list[int], length: int, last: int, count: int) -> list[Window]:
    """``count`` windows of ``length`` inputs ending ``i * last`` tokens before the text's end, each scoring
    its final ``min(last, length)`` predictions (bojone/rerope's protocol; see the module docstring)."""
    need = length + 1 + (count - 1) * last
    if len(token_ids) < need:
        raise UsageError(f"the text has {len(token_ids)} tokens; {count} window(s) of {length} scoring the last "
                         f"{last} need {need}: give a longer --text or fewer --windows")
    scored = min(last, length)
    out = []
    for i in range(count):
        end = len(token_ids) - i * last
        w = token_ids[end - length - 1:end]
        out.append(Window(w[:-1], w[-scored:], length - scored))
    return out


@torch.inference_mode()
def scored_nll(program, window: Window, chunk: int = 1024) -> tuple[float, int]:
    """Sum of the NLL of ``window.targets`` under the ``prefill_logits`` entry fed ``window.inputs``, and the count."""
    from lcc.runtime import device_of

    dev = device_of(program)
    x = torch.tensor([window.inputs], device=dev)
    logits = program.entries["prefill_logits"](x, *program.cache.empty(dev))[0][0][window.start:]  # [S', V]
    targets = torch.tensor(window.targets, device=dev)
    total = 0.0
    for s in range(0, targets.shape[0], chunk):
        lp = torch.log_softmax(logits[s:s + chunk].double(), -1)
        total -= float(lp.gather(-1, targets[s:s + chunk, None]).sum())
    return total, int(targets.shape[0])


def window_nll(program, ids: list[int], chunk: int = 1024) -> tuple[float, int]:
    """Sum of next-token NLL over the window (every position but the last predicts the next) and the count."""
    return scored_nll(program, Window(ids, ids[1:]), chunk)


def perplexity(program, token_ids: list[int], length: int, count: int, last: int = 0) -> tuple[float, int]:
    """exp(mean NLL) over ``count`` windows of ``length`` and the tokens scored: the first windows, or with
    ``last`` > 0 the text's final ``last`` tokens."""
    if last:
        parts = [scored_nll(program, w) for w in tail_windows(token_ids, length, last, count)]
    else:
        parts = [window_nll(program, w) for w in windows(token_ids, length, count)]
    total, n = sum(t for t, _ in parts), sum(c for _, c in parts)
    return math.exp(total / n), n
