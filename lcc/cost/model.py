"""Symbolic cost of a whole program: formulas in the sequence length, evaluated at lengths on a profile.

``program_cost(program, device)`` walks every entry point once (:mod:`lcc.cost.graph`);
the result prices any length without walking again.  Memory at a target length ``n``:
weights + KV cache (capacity for ``n``) + the caller's token ids + the entry's peak live
activations.  Times are rooflines on a :class:`~lcc.cost.hardware.Profile`; decode is one
token with the cache full (position = capacity), the worst case at that length.

A context-parallel program (``program.meta["context_parallel"]``) is priced per rank: its graphs
hold one rank's tokens, its cache one rank's slots (``C`` stands for them: ceil(L / N) + 4), and
its collectives (:func:`lcc.cost.comm.entry_collectives`) add their link time to the roofline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy
import torch

from lcc.capture.program import Program
from lcc.cost import comm
from lcc.cost.attention import working_set
from lcc.cost.graph import EntryCost, entry_cost
from lcc.cost.memory import capacity_for, kv_cache_bytes
from lcc.cost.symbols import C, K, L, at, substitute

ATTENTION_ALGOS = ("reference", "auto", "chunked:chunk=1024", "flash")


@dataclass
class Evaluation:
    """Everything priced at one length (bytes, FLOPs, seconds)."""

    length: int
    capacity: int  # the cache's C: its capacity, or one rank's slots of a context-parallel cache
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
    ranks: int = 1  # the figures are one rank's of a context-parallel program over this many
    comm_bytes: float = 0.0  # received by one rank over the link during prefill
    comm_time: float | None = None  # of prefill_time, the seconds in collectives
    decode_comm_bytes: float = 0.0
    decode_comm_time: float | None = None  # of decode_time

    @property
    def memory(self) -> float:
        return max(self.prefill_memory, self.decode_memory or 0.0)

    @property
    def decode_tokens_per_s(self) -> float | None:
        return None if not self.decode_time else 1.0 / self.decode_time

    @property
    def comm_share(self) -> float | None:
        return None if not self.prefill_time or self.comm_time is None else self.comm_time / self.prefill_time

    @property
    def decode_comm_share(self) -> float | None:
        return None if not self.decode_time or self.decode_comm_time is None else \
            self.decode_comm_time / self.decode_time

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "time_by_op"}
        d["memory"] = self.memory
        d["decode_tokens_per_s"] = self.decode_tokens_per_s
        d["comm_share"] = self.comm_share
        d["decode_comm_share"] = self.decode_comm_share
        return d


@dataclass
class ProgramCost:
    program: Program
    device: str
    entries: dict[str, EntryCost]
    _collectives: dict = field(default_factory=dict, repr=False)

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

    @property
    def ranks(self) -> int:
        """Ranks of a context-parallel program (its figures are per rank), else 1."""
        return int(self.program.meta.get("context_parallel", {}).get("ranks", 1))

    def kv_cache(self) -> sympy.Expr:
        if self.ranks > 1:  # one rank's slots, each with its position code: the listed tensors, C slots long
            return kv_cache_bytes(replace(self.program.cache, capacity=cache_extent(self.program)))
        return kv_cache_bytes(self.program.cache, self._cache_inputs())

    def collectives(self, entry: str) -> list[comm.Collective]:
        """What one call of ``entry`` sends and receives per rank (none on one device)."""
        if entry not in self._collectives:
            self._collectives[entry] = comm.entry_collectives(self.program.entries[entry])
        return self._collectives[entry]

    def _comm(self, entry: str, length: int, profile) -> tuple[float, float | None]:
        """(bytes one rank receives, seconds in collectives on ``profile``'s link) of one call at ``length``."""
        colls = self.collectives(entry)
        if not colls:
            return 0.0, (None if profile is None else 0.0)
        received = at(sympy.Add(*(c.bytes_in * c.calls for c in colls)), length)
        return received, (None if profile is None else at(comm.comm_time(colls, profile), length))

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
        if self.ranks > 1:
            f["prefill_comm_bytes"] = sympy.Add(*(c.bytes_in * c.calls for c in self.collectives(self.prefill.entry)))
            if self.decode is not None:
                f["decode_comm_bytes"] = sympy.Add(*(c.bytes_in * c.calls for c in self.collectives("decode")))
        slots = comm.cache_slots(L, self.ranks) if self.ranks > 1 else L
        return {k: sympy.expand(substitute(v, L, L, slots)) for k, v in f.items()}

    def activation_formula(self, length: int) -> sympy.Expr:
        """Live activations at the node where prefill peaks at ``length``, as a formula of L."""
        _, step = self.prefill.peak(length, length, self._capacity(length))
        return substitute(self.prefill.peak_expr(step))

    def _capacity(self, length: int) -> int:
        """The value of ``C`` at ``length``: the cache capacity, or a context-parallel rank's slots."""
        cap = capacity_for(self.program.cache, length)
        return comm.cache_slots(cap, self.ranks) if self.ranks > 1 else cap

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
        comm_bytes, comm_time = self._comm(pre.entry, length, profile)
        dec_comm_bytes, dec_comm_time = self._comm("decode", length, profile) if self.decode is not None \
            else (0.0, None)
        if comm_time:
            pre_time += comm_time
        if dec_comm_time:
            dec_time += dec_comm_time
        return Evaluation(length, cap, at(pre.flops, length, length, cap), at(pre.bytes, length, length, cap),
                          weights, kv, act, weights + kv + ids + act, dec_mem, pre_time, dec_time,
                          pre.nodes[step].name, by_op, self.ranks, comm_bytes, comm_time, dec_comm_bytes,
                          dec_comm_time)

    def chunked_prefill(self, length: int, chunk: int, profile=None) -> dict | None:
        """Prefill in chunks of ``chunk`` queries against the growing cache: memory and time.

        Priced from the same graph with L = chunk and attention keys K = length (the last,
        largest chunk; its activations are the peak); time sums the chunks, each at its keys.
        None for a context-parallel program: its prefill shards the whole prompt, it is never chunked.
        """
        if self.ranks > 1:
            return None
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
        """Bytes one layer's prefill attention holds while it runs, per algo (the widest layer); a
        context-parallel rank's: the gathered K/V and its busiest chunk's call (:func:`_cp_working_set`)."""
        out = {}
        nodes = [n for n in self.program.entries[self.prefill.entry].graph.nodes if n.op == "call_function"
                 and str(n.target) in ("lcc.attention.default", "lcc.cp_attention.default")]
        if not nodes:
            return out
        from lcc.graph import named_args

        for algo in algos:
            best = 0.0
            for node in nodes:
                a = named_args(node)
                q, k, v = a["q"].meta["val"], a["k"].meta["val"], a["v"].meta["val"]
                B, Hq, D = int(q.shape[0]), int(q.shape[1]), int(q.shape[3])  # not the sequence: int() fixes it
                Hkv, Dv = int(k.shape[1]), int(v.shape[-1])
                if "ranks" in a:
                    ws = self._cp_working_set(length, B, Hq, Hkv, D, Dv, a["mask"], algo, q.dtype.itemsize,
                                              a["ranks"], a["balance"])
                else:
                    ws = working_set(B, Hq, Hkv, length, length, D, Dv, a["mask"], algo, self.device,
                                     q.dtype.itemsize)
                best = max(best, at(ws, length))
            out[algo] = best
        return out

    def _cp_working_set(self, length, B, Hq, Hkv, D, Dv, mask, algo, itemsize, ranks, balance) -> sympy.Expr:
        """The K/V of every rank gathered, and the busiest local chunk's attention call against its keys."""
        from lcc.ops.context_parallel import busiest_chunk_ends, chunks_per_rank, local_len

        tokens = local_len(length, ranks, balance)
        chunk = tokens // chunks_per_rank(balance)
        end = max(busiest_chunk_ends(chunk, ranks, balance))
        gathered = itemsize * B * Hkv * ranks * tokens * (D + Dv)
        return gathered + working_set(B, Hq, Hkv, chunk, end, D, Dv, mask, algo, self.device, itemsize, suffix=True)


def cache_extent(program: Program) -> int:
    """The length of the cache's dim 2 in ``program``'s graphs, which the cost makes ``C``: the capacity, or a
    context-parallel rank's slots at it."""
    ranks = int(program.meta.get("context_parallel", {}).get("ranks", 1))
    return comm.cache_slots(program.cache.capacity, ranks) if ranks > 1 else program.cache.capacity


def program_cost(program: Program, device: str = "cpu") -> ProgramCost:
    """Walk every entry point of ``program`` for ``device`` ("cpu" or "cuda")."""
    entries = {name: entry_cost(gm, name, cache_extent(program), device, program.cache)
               for name, gm in program.entries.items()}
    return ProgramCost(program, device, entries)


__all__ = ["ProgramCost", "Evaluation", "program_cost", "cache_extent", "L", "K", "C"]
