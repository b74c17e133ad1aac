"""Run a program: greedy generation through ``prefill`` + ``decode`` with the explicit cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lcc.capture.program import Program


@dataclass
class Generation:
    prompt_ids: list[int]
    new_ids: list[int]
    text: str


def eos_ids(loaded_model) -> set[int]:
    """The token ids that end generation, as transformers' generate reads them."""
    ids = set()
    for source in (getattr(loaded_model, "generation_config", None), loaded_model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is None:
            continue
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        if ids:
            break
    return ids


@torch.inference_mode()
def generate_ids(program: Program, prompt_ids: torch.Tensor, max_new_tokens: int,
                 stop: set[int] = frozenset(), cache_layout=None) -> list[int]:
    """Greedy decoding: one prefill of the prompt, then one decode call per new token.

    ``program`` is anything with ``entries`` (a Program or a loaded artifact); ``cache_layout``
    defaults to ``program.cache``.
    """
    prefill, decode = program.entries["prefill"], program.entries["decode"]
    layout = cache_layout or program.cache
    n = prompt_ids.shape[1]
    if n + max_new_tokens > layout.capacity:
        from lcc.errors import UsageError

        raise UsageError(f"prompt ({n} tokens) + new tokens ({max_new_tokens}) exceed the cache capacity "
                         f"{layout.capacity}: compile with a larger --target-len or ask for fewer tokens")
    logits, *cache = prefill(prompt_ids, *layout.empty())
    out: list[int] = []
    token = logits[:, -1].argmax(-1)
    for step in range(max_new_tokens):
        out.append(int(token[0]))
        if out[-1] in stop or step == max_new_tokens - 1:
            break
        logits, *cache = decode(token.view(1, 1), torch.tensor(n + step), *cache)
        token = torch.as_tensor(logits)[:, -1].argmax(-1)
    return out
