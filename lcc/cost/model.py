"""Symbolic cost of a whole program: formulas in the sequence length, evaluated at lengths on a profile.

``program_cost(program, device)`` walks every entry point once (:mod:`lcc.cost.graph`);
the result prices any length without walking again.  Memory at a target length ``n``:
weights + KV cache (capacity for ``n``) + the caller's token ids + the entry's peak live
activations.  Times are rooflines on a :class:`~lcc.cost.hardware.Profile`; decode is one
token with the cache full (position = capacity), the worst case at that length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy
import torch

from lcc.capture.program import Program
from lcc.cost.attention import working_set
from lcc.cost.graph import EntryCost, entry_cost
from lcc.cost.memory import capacity_for, kv_cache_bytes
from lcc.cost.symbols import C, K, L, at, substitute

ATTENTION_ALGOS = ("reference", "auto", "chunked:chunk=1024", "flash")


@dataclass
class Evaluation:
    """Everything priced at one length (bytes, FLOPs, seconds)."""

    length: int
    capacity: int
    prefill_flops: float
    prefill_bytes: float
    weights: float
    kv_cache: float
    activations: float
    prefill_memory: float
    decode_memory: float | None
    prefill_time: float | None
    decode_time: float | None
    peak_node: str = ""
    time_by_op: dict = field(default_factory=dict)

    @property
    def memory(self) -> float:
        return max(self.prefill_memory, self.decode_memory or 0.0)

    @property
    def decode_tokens_per_s(self) -> float | None:
        return None if not self.decode_time else 1.0 / self.decode_time

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "time_by_op"}
        d["memory"] = self.memory
        d["decode_tokens_per_s"] = self.decode_tokens_per_s
        return d


@dataclass
class ProgramCost:
    program: Program
    device: str
    entries: dict[str, EntryCost]

    @property
    def prefill(self) -> EntryCost:
        return self.entries[next(n for n in ("prefill", "prefill_logits", "prefill_full") if n in self.entries)]

    @property
    def decode(self) -> EntryCost | None:
        return self.entries.get("decode")

    @property
    def weights(self) -> int:
        seen = {}
        for e in self.entries.values():
            seen.update(e.weights)
        return sum(seen.values())

    def kv_cache(self) -> sympy.Expr:
        return kv_cache_bytes(self.program.cache, self._cache_inputs())

    def _cache_inputs(self) -> sympy.Expr:
        """Bytes of the prefill's cache inputs (every input after the token ids), capacity dim made ``C``."""
        from lcc.cost.symbols import prod

        gm = self.program.entries[self.prefill.entry]
        total = sympy.Integer(0)
        for n in [n for n in gm.graph.nodes if n.op == "placeholder"][1:]:
            v = n.meta.get("val")
            if isinstance(v, torch.Tensor):
                dims = [C if d == self.program.cache.capacity else int(d) for d in v.shape]
                total += prod(dims) * v.dtype.itemsize
        return total

    def formulas(self) -> dict[str, sympy.Expr]:
        """The totals as expressions of L (K = C = L: self-attention over L tokens, a cache of L)."""
        f = {"prefill_flops": self.prefill.flops, "prefill_bytes": self.prefill.bytes,
             "kv_cache": self.kv_cache(), "weights": sympy.Integer(self.weights)}
        if self.decode is not None:
            f["decode_flops"] = self.decode.flops
            f["decode_bytes"] = self.decode.bytes
        return {k: sympy.expand(substitute(v)) for k, v in f.items()}

    def activation_formula(self, length: int) -> sympy.Expr:
        """Live activations at the node where prefill peaks at ``length``, as a formula of L."""
        _, step = self.prefill.peak(length, length, self._capacity(length))
        return substitute(self.prefill.peak_expr(step))

    def _capacity(self, length: int) -> int:
        return capacity_for(self.program.cache, length)

    def evaluate(self, length: int, profile=None) -> Evaluation:
        cap = self._capacity(length)
        pre = self.prefill
        weights = float(self.weights)
        kv = at(self.kv_cache(), length, length, cap)
        ids = 8.0 * self.program.cache.batch * length
        act, step = pre.peak(length, length, cap)
        dec_mem = dec_time = pre_time = None
        by_op = {}
        if self.decode is not None:
            dec_mem = weights + kv + self.decode.peak(length, length, cap)[0]
        if profile is not None:
            pre_time, by_op = pre.time(profile, length, length, cap, by_op=True)
            if self.decode is not None:
                dec_time = self.decode.time(profile, length, length, cap)
        return Evaluation(length, cap, at(pre.flops, length, length, cap), at(pre.bytes, length, length, cap),
                          weights, kv, act, weights + kv + ids + act, dec_mem, pre_time, dec_time,
                          pre.nodes[step].name, by_op)

    def chunked_prefill(self, length: int, chunk: int, profile=None) -> dict:
        """Prefill in chunks of ``chunk`` queries against the growing cache: memory and time.

        Priced from the same graph with L = chunk and attention keys K = length (the last,
        largest chunk; its activations are the peak); time sums the chunks, each at its keys.
        """
        cap = self._capacity(length)
        chunk = min(chunk, length)
        pre = self.prefill
        act, _ = pre.peak(chunk, length, cap)
        kv = at(self.kv_cache(), length, length, cap)
        out = {"chunk": chunk, "activations": act, "memory": self.weights + kv + act, "time": None}
        if profile is not None:
            n = -(-length // chunk)
            out["time"] = sum(pre.time(profile, chunk, min(length, (i + 1) * chunk), cap) for i in range(n))
        return out

    def attention_working_sets(self, length: int, algos=ATTENTION_ALGOS) -> dict[str, float]:
        """Bytes one layer's prefill attention holds while it runs, per algo (the widest layer)."""
        out = {}
        nodes = [n for n in self.program.entries[self.prefill.entry].graph.nodes
                 if n.op == "call_function" and str(n.target) == "lcc.attention.default"]
        if not nodes:
            return out
        from lcc.graph import full_args

        for algo in algos:
            best = 0.0
            for node in nodes:
                q, k, v, _, _, mask = full_args(node)[:6]
                (B, Hq, _, D), Hkv, Dv = q.meta["val"].shape, k.meta["val"].shape[1], v.meta["val"].shape[-1]
                ws = working_set(int(B), int(Hq), int(Hkv), length, length, int(D), int(Dv), mask, algo,
                                 self.device, q.meta["val"].dtype.itemsize)
                best = max(best, at(ws, length))
            out[algo] = best
        return out


def program_cost(program: Program, device: str = "cpu") -> ProgramCost:
    """Walk every entry point of ``program`` for ``device`` ("cpu" or "cuda")."""
    entries = {name: entry_cost(gm, name, program.cache.capacity, device, program.cache)
               for name, gm in program.entries.items()}
    return ProgramCost(program, device, entries)


__all__ = ["ProgramCost", "Evaluation", "program_cost", "L", "K", "C"]
