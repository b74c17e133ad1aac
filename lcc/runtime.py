"""Run a program: greedy generation through ``prefill`` + ``decode`` with the explicit cache."""

from __future__ import annotations

import copy
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


def device_of(program) -> torch.device:
    """The device a program's weights live on (``cpu`` for programs without parameters)."""
    meta = getattr(program, "meta", None)
    return torch.device((meta.get("device") if isinstance(meta, dict) else None) or "cpu")


def to_device(program: Program, device: str) -> Program:
    """The program with its weights on ``device`` and every device constant in its graphs rewritten.

    torch.export records ``device=cpu`` on the tensors a graph creates (``arange``, ``zeros``,
    ``full``...); those are rewritten so the whole program runs on ``device``.  On CUDA, importing
    :mod:`lcc.backends.triton` installs the Triton kernels as the ops' CUDA implementations.
    The new program's graphs own their weights: ``program`` itself stays where it was.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from lcc.errors import UsageError

            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        import lcc.backends.triton  # noqa: F401  (Triton kernels as the ops' CUDA implementations)
    entries = {}
    for name, gm in program.entries.items():
        new = copy.deepcopy(gm)
        for node in new.graph.nodes:
            node.args = _retarget(node.args, dev)
            node.kwargs = _retarget(node.kwargs, dev)
        new.recompile()
        entries[name] = new.to(dev)
    return program.with_entries(entries, meta={**program.meta, "device": str(dev)})


def _retarget(value, dev: torch.device):
    if isinstance(value, torch.device):
        return dev
    if isinstance(value, tuple):
        return tuple(_retarget(v, dev) for v in value)
    if isinstance(value, list):
        return [_retarget(v, dev) for v in value]
    if isinstance(value, dict):
        return {k: _retarget(v, dev) for k, v in value.items()}
    return value


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
    ring = layout.ring is not None  # StreamingLLM's cache: constant size, no end
    if n > layout.capacity or (n + max_new_tokens > layout.capacity and not ring):
        from lcc.errors import UsageError

        raise UsageError(f"prompt ({n} tokens) + new tokens ({max_new_tokens}) exceed the cache capacity "
                         f"{layout.capacity}: compile with a larger --target-len or ask for fewer tokens")
    dev = device_of(program)
    if n == 1:  # prefill is captured for S >= 2; one token is a decode step at position 0 on an empty cache
        logits, *cache = decode(prompt_ids.to(dev), torch.tensor(0, device=dev), *layout.empty(dev))
    else:
        logits, *cache = prefill(prompt_ids.to(dev), *layout.empty(dev))
    out: list[int] = []
    token = logits[:, -1].argmax(-1)
    for step in range(max_new_tokens):
        out.append(int(token[0]))
        if out[-1] in stop or step == max_new_tokens - 1:
            break
        logits, *cache = decode(token.view(1, 1), torch.tensor(n + step, device=dev), *cache)
        token = torch.as_tensor(logits)[:, -1].argmax(-1)
    return out
