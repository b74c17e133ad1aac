"""memory-tokens: recurrent memory tokens (RMT, Bulatov et al. 2022, decoder form of sec. 3).

The input runs in segments of S tokens.  Segment i is fed as embeddings
``[read_i (M), embed(tokens_i) (S), write (M)]`` at positions 0..2M+S-1 from an empty cache;
the final hidden states (after the last norm, the lm_head's input) at the M write places,
each RMS-normalised to the RMS of the token-embedding table, are ``read_{i+1}``.  (RMT fine-tunes
the model; here it stays frozen, and its outputs are ~14x the scale of its input embeddings on
smollm2-135m, so they are brought back to the input scale before being read: ``to_input_scale``.)
``read_0`` and ``write`` are the same M learned embeddings, the only new parameters:
``lcc train-memory`` fits them with the model frozen (``lcc.memory``) and saves them to a
safetensors file; the pass loads that file (``memory=FILE``), or, without one,
initialises them as the mean token embedding plus 0.1 x its per-dimension std of noise, seeded.

How it composes with capture: the captured graphs are kept and only widened.  In every entry
the embedding lookup becomes an ``inputs_embeds`` input and the lm_head's input is returned
beside the logits (``embeds entries``); the segment loop is a runtime-level driver around them
(``SegmentPrefill``, ``SegmentDecode``), which takes the place of ``prefill``/``prefill_logits``/
``prefill_full``/``decode`` with their calling conventions unchanged, so ``lcc run``, ``lcc diff``
and ``lcc eval`` run it as any program.  The cache holds only the current segment
(``[read, tokens so far]``); a decode step that starts a segment first decodes the M write
embeddings at positions M+S.. to get the new memory, then prefills ``[read, token]``.  The
memory tensor is a parameter of the driver modules (``program.meta["memory_tokens"]`` too); the
trained file lives wherever ``--out`` put it and is named by the pass (``memory=FILE``), which is
how ``lcc run``/``lcc diff``/``lcc eval`` load it.  ``lcc compile``'s backends lower graph modules
only, so an artifact with this pass is not supported yet.
Segments are shortened to ``capacity - 2M`` tokens when the program was captured with less
room than 2M+S (as ``lcc run`` does, for prompt + new tokens); apply this pass last.
"""

from __future__ import annotations

from functools import reduce
from pathlib import Path

import torch
import torch.fx
from torch import nn

from lcc.capture.program import Program, copy_graph_module
from lcc.errors import UsageError
from lcc.passes.base import MAX_TOKENS, Param, PassResult, register

aten = torch.ops.aten
_THROUGH = (aten.slice.Tensor, aten.alias.default, aten.select.int)
NOISE = 0.1  # initial noise, in units of the per-dimension std of the token embeddings


def to_input_scale(hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """Each vector of ``hidden`` [..., H] rescaled to the RMS of the token embeddings (the next read memory)."""
    target = embedding.detach().float().pow(2).mean().sqrt()
    return hidden * (target / hidden.float().pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)).to(hidden.dtype)


def init_memory(embedding: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """M embeddings: the mean token embedding plus NOISE x its per-dimension std of seeded noise."""
    w = embedding.detach().float()
    gen = torch.Generator().manual_seed(seed)
    return w.mean(0) + NOISE * w.std(0) * torch.randn(count, w.shape[1], generator=gen)


def save_memory(path: Path, memory: torch.Tensor, meta: dict) -> None:
    """Write the memory embeddings (tensor ``memory`` [M, H]) and string metadata, via a temp file."""
    import os
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=path.parent)
    os.close(fd)
    save_file({"memory": memory.detach().float().contiguous()}, tmp, metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_memory(path: str) -> tuple[torch.Tensor, dict]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"memory-tokens: memory={path} does not exist; write one with `lcc train-memory ... --out "
                         f"{path}` or leave memory= out for fresh embeddings")
    with safe_open(str(p), framework="pt") as f:
        return f.get_tensor("memory"), dict(f.metadata() or {})


# --- embeds entries: the captured graphs with an inputs_embeds input and the final hidden state out ---------------


def _attr(gm: torch.fx.GraphModule, target: str) -> torch.Tensor:
    return reduce(getattr, target.split("."), gm)


def _embedding_node(gm: torch.fx.GraphModule) -> torch.fx.Node:
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == aten.embedding.default]
    if len(nodes) != 1:
        raise UsageError(f"memory-tokens: expected one token-embedding lookup in the program, found {len(nodes)}")
    return nodes[0]


def embedding_weight(gm: torch.fx.GraphModule) -> torch.Tensor:
    return _attr(gm, _embedding_node(gm).args[0].target)


def embeds_entry(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``f(input_ids, inputs_embeds, ...rest) -> (logits, final_hidden[B,S,H], ...rest of outputs)``.

    ``input_ids`` stays (the graph reads its length); its values are no longer used.
    """
    from lcc.passes.kv_cache import set_signature

    gm = copy_graph_module(gm)
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        graph.erase_node(node)
    emb = _embedding_node(gm)
    ids = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(ids):
        embeds = graph.placeholder("inputs_embeds")
    embeds.meta.update({k: v for k, v in emb.meta.items() if k in ("val", "tensor_meta")})
    emb.replace_all_uses_with(embeds)
    graph.erase_node(emb)
    out = next(n for n in graph.nodes if n.op == "output")
    results = list(out.args[0])
    head = results[0]
    while head.op == "call_function" and head.target != aten.linear.default:
        head = head.args[0]
    final = head.args[0]
    while final.op == "call_function" and final.target in _THROUGH:
        final = final.args[0]
    out.args = (tuple([results[0], final] + results[1:]),)
    graph.eliminate_dead_code()
    set_signature(gm)
    return gm


# --- the runtime-level segment loop -----------------------------------------------------------------------------------


class _Segments(nn.Module):
    """Shared state of the drivers: the memory parameter, the token embedding, M and S."""

    def __init__(self, memory: torch.Tensor, embedding: torch.Tensor, segment: int):
        super().__init__()
        self.memory = nn.Parameter(memory.detach().clone(), requires_grad=False)
        self.embedding = embedding  # the model's table (shared, not a copy)
        self.count, self.segment = memory.shape[0], segment

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.embedding)

    def mem(self, batch: int) -> torch.Tensor:
        return self.memory.to(self.embedding.dtype).unsqueeze(0).expand(batch, -1, -1)


class SegmentPrefill(nn.Module):
    """A prefill-like entry run segment by segment; the cache returned is the last segment's."""

    def __init__(self, core: torch.fx.GraphModule, seg: _Segments, logits: str, hidden: bool):
        super().__init__()
        self.core, self.seg, self.logits, self.hidden = core, seg, logits, hidden

    def forward(self, input_ids, *cache):
        m, s, b = self.seg.count, self.seg.segment, input_ids.shape[0]
        read, write, n = self.seg.mem(b), self.seg.mem(b), input_ids.shape[1]
        logits, hidden = [], []
        for a in range(0, n, s):
            tokens = input_ids[:, a:a + s]
            last = a + s >= n
            x = torch.cat([read, self.seg.embed(tokens)] + ([] if last else [write]), 1)
            ids = torch.zeros(x.shape[:2], dtype=input_ids.dtype, device=input_ids.device)
            out = self.core(ids, x, *[torch.zeros_like(c) for c in cache])
            k = tokens.shape[1]
            if self.logits == "all":
                logits.append(out[0][:, m:m + k])
            elif last:
                logits.append(out[0])
            if self.hidden:
                hidden.append(out[2][:, :, m:m + k])
            if not last:
                read = to_input_scale(out[1][:, -m:], self.seg.embedding)
        rest = out[3:] if self.hidden else out[2:]
        front = (torch.cat(logits, 1),) + ((torch.cat(hidden, 2),) if self.hidden else ())
        return (*front, *rest)


class SegmentDecode(nn.Module):
    """One token at global ``position``; a step that opens a segment first writes the memory."""

    def __init__(self, decode: torch.fx.GraphModule, prefill: torch.fx.GraphModule, seg: _Segments):
        super().__init__()
        self.decode, self.prefill, self.seg = decode, prefill, seg

    def forward(self, input_ids, position, *cache):
        m, s, b = self.seg.count, self.seg.segment, input_ids.shape[0]
        p = int(position)
        j = p % s
        if j or p == 0:
            logits, _, *cache = self.decode(input_ids, self.seg.embed(input_ids), torch.tensor(m + j), *cache)
            return (logits, *cache)
        write, read = self.seg.mem(b), []
        for t in range(m):
            _, final, *cache = self.decode(input_ids, write[:, t:t + 1], torch.tensor(m + s + t), *cache)
            read.append(final)
        x = torch.cat([to_input_scale(torch.cat(read, 1), self.seg.embedding), self.seg.embed(input_ids)], 1)
        ids = torch.zeros(x.shape[:2], dtype=input_ids.dtype, device=input_ids.device)
        logits, _, *cache = self.prefill(ids, x, *[torch.zeros_like(c) for c in cache])
        return (logits, *cache)


@register("memory-tokens",
          params=(Param("count", int, 16, "memory tokens M carried from segment to segment", low=1, high=1 << 16),
                  Param("segment", int, 512, "tokens per segment S", low=1, high=MAX_TOKENS),
                  Param("memory", str, "", "safetensors file from `lcc train-memory` (default: fresh embeddings)"),
                  Param("seed", int, 0, "seed of the fresh embeddings' noise", low=0, high=2**63 - 1)),
          exact=False, slots=("segments",), last=True, plan=None, doc="recurrent memory tokens (RMT): segments of S tokens carry M memory embeddings")
def memory_tokens(program: Program, count: int = 16, segment: int = 512, memory: str = "",
                  seed: int = 0) -> PassResult:
    if count < 1 or segment < 1:
        raise UsageError(f"memory-tokens: need count >= 1 and segment >= 1, got count={count}, segment={segment}")
    room = program.cache.capacity - 2 * count
    if room < 1:
        raise UsageError(f"memory-tokens: the program's cache ({program.cache.capacity} slots) has no room for "
                         f"2 x {count} memory tokens plus text: use fewer memory tokens or a longer capture")
    first = next(iter(program.entries.values()))
    weight = embedding_weight(first)
    if memory:
        mem, meta = load_memory(memory)
        if mem.shape != (count, weight.shape[1]):
            raise UsageError(f"memory-tokens: {memory} holds memory of shape {tuple(mem.shape)}; this pass needs "
                             f"count={count} x hidden {weight.shape[1]} (train with --count {count})")
    else:
        mem, meta = init_memory(weight, count, seed), {"init": f"mean embedding + noise, seed {seed}"}
    seg = _Segments(mem, weight, min(segment, room))
    cores = {name: embeds_entry(gm) for name, gm in program.entries.items()}
    entries: dict[str, nn.Module] = {}
    for name, core in cores.items():
        if name == "decode":
            if "prefill" not in cores:
                raise UsageError("memory-tokens: a decode entry needs the prefill entry beside it")
            entries[name] = SegmentDecode(core, cores["prefill"], seg)
        else:
            entries[name] = SegmentPrefill(core, seg, "last" if name == "prefill" else "all", name == "prefill_full")
    info = {"count": count, "segment": seg.segment, "memory": memory or None, "file_meta": meta,
            "embeddings": seg.memory}
    return PassResult(program.with_entries(entries, meta={**program.meta, "memory_tokens": info}), True)
