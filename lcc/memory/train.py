"""``lcc train-memory``: fit only the M memory embeddings of ``memory-tokens`` on real text, model frozen.

The recurrence is RMT's (see ``lcc.passes.memory_tokens``), written here on the HF module so
autograd runs through it: each step takes ``unroll`` consecutive segments of S tokens at a seeded
random place in the text, runs ``[read, tokens, write]`` per segment with the previous segment's
write outputs (at the input embeddings' scale) as ``read``, and minimises the next-token loss over
all tokens (back-propagation through the segments).  Adam on the memory only; the model's weights get no gradient.
"""

from __future__ import annotations

import math
import random
from typing import Callable

import torch


def rmt_nll(model, memory: torch.Tensor, ids: torch.Tensor, segment: int) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL of ``ids`` [1, n] run in segments carrying ``memory`` [M, H], and its count."""
    from lcc.passes.memory_tokens import to_input_scale

    m = memory.shape[0]
    embed = model.get_input_embeddings()
    read = write = memory.unsqueeze(0).to(embed.weight.dtype)
    n, logits = ids.shape[1], []
    for a in range(0, n, segment):
        tokens = ids[:, a:a + segment]
        last = a + segment >= n
        x = torch.cat([read, embed(tokens)] + ([] if last else [write]), 1)
        pos = torch.arange(x.shape[1]).unsqueeze(0)
        h = model.model(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state
        logits.append(model.lm_head(h[:, m:m + tokens.shape[1]]))
        read = to_input_scale(h[:, -m:], embed.weight)
    lp = torch.log_softmax(torch.cat(logits, 1)[0, :-1].float(), -1)
    return -lp.gather(-1, ids[0, 1:, None]).sum(), n - 1


def train_memory(loaded, count: int, segment: int, steps: int, token_ids: list[int], lr: float = 1e-2,
                 seed: int = 0, unroll: int = 2, progress: Callable[[int, float], None] | None = None):
    """(memory [M, H], per-step mean losses); only the memory embeddings are trained."""
    from lcc.passes.memory_tokens import init_memory

    model = loaded.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    span = segment * unroll
    if len(token_ids) < span + 1:
        from lcc.errors import UsageError

        raise UsageError(f"the text has {len(token_ids)} tokens; training needs at least {span + 1} "
                         f"({unroll} segments of {segment}): give a longer --text or a smaller --segment")
    memory = torch.nn.Parameter(init_memory(model.get_input_embeddings().weight, count, seed))
    opt = torch.optim.Adam([memory], lr=lr)
    rng = random.Random(seed)
    losses = []
    for step in range(steps):
        start = rng.randrange(0, len(token_ids) - span + 1)
        ids = torch.tensor([token_ids[start:start + span]])
        total, n = rmt_nll(model, memory, ids, segment)
        loss = total / n
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError("training diverged (non-finite loss): lower the learning rate")
    return memory.detach(), losses
