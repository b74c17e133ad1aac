"""Communication, memory and time per rank of the ``context-parallel`` pass, as sympy formulas of L and N.

A collective over N ranks of a ring (NCCL's and gloo's all-gather) moves (N - 1) / N of the
gathered bytes into each rank in N - 1 steps: time = bytes_in / link_bandwidth + (N - 1) x
link_latency (Thakur et al. 2005, ring all-gather).  Prefill all-gathers each layer's K and V
(every rank receives the other ranks' L (N-1)/N tokens) and the last token's hidden state; a ring
attention (Liu et al. 2023) would move the same K/V bytes, overlapped with compute, holding 2 L/N
tokens instead of L per layer.  Decode all-gathers each layer's partial output and log-sum-exp
per step.  The link comes from the hardware profile (``[link]``: NVLink for h100 / h200, PCIe
for cards without it); a profile without one gets :data:`PCIE` for a GPU and :data:`LOOPBACK`
for the CPU (gloo over TCP loopback; :func:`measure_loopback` measures it, run on 2 ranks).
Compute per rank is the roofline of its share: linear layers on L/N tokens, attention over 1/N of
the causal pairs (head-tail balance), at the profile's peak matmul rate.  A rewritten program's own
collectives (:func:`entry_collectives`, priced by ``lcc cost``) come from its ops' arguments.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass

import sympy

from lcc.cost.nodes import is_tensor_node, op_name
from lcc.cost.symbols import L, dim_expr, prod

N = sympy.Symbol("N", positive=True, integer=True)  # ranks
PCIE = ("PCIe Gen4 x16 (assumed)", 25e9, 10e-6)
LOOPBACK = ("gloo TCP loopback (assumed)", 1e9, 50e-6)


@dataclass(frozen=True)
class Collective:
    """One kind of collective a context-parallel program issues: bytes into each rank per call, calls per pass."""

    name: str
    bytes_in: sympy.Expr  # received by one rank per call
    calls: sympy.Expr  # per prefill (or per decode step)
    steps: sympy.Expr = N - 1  # ring steps per call (latency terms)


def link_of(profile) -> tuple[str, float, float]:
    """(name, bytes/s per direction, seconds per message) of ``profile``'s link, or the assumed default."""
    if getattr(profile, "link_bandwidth", 0):
        return profile.link, profile.link_bandwidth, profile.link_latency
    return PCIE if profile.kind == "cuda" else LOOPBACK


def cache_slots(capacity, ranks: int):
    """Slots of one rank's cache for ``capacity`` tokens (its share with padding, its decode share and the spare
    slot non-owners write into: ``lcc.passes.context_parallel``'s layout); ``capacity`` may be a sympy symbol."""
    from lcc.passes.context_parallel import local_slots

    slots = local_slots(capacity, ranks) + 1
    return slots.rewrite(sympy.ceiling) if isinstance(slots, sympy.Basic) else slots


def kv_bytes_per_token(spec, itemsize: int, batch: int = 1) -> int:
    """K and V of one token in one layer."""
    return batch * spec.kv_heads * 2 * spec.head_dim * itemsize


def prefill_collectives(spec, itemsize: int, batch: int = 1) -> list[Collective]:
    """All-gather of K and of V per layer (two collectives), and of the last token's hidden state before the LM
    head (one row per rank, the owner's kept: ``lcc.cp_gather_last``)."""
    share = L * (N - 1) / N
    return [Collective("all-gather K/V", share * kv_bytes_per_token(spec, itemsize, batch), spec.layers, 2 * (N - 1)),
            Collective("all-gather last hidden", (N - 1) * batch * spec.hidden * itemsize, 1)]


def decode_collectives(spec, batch: int = 1) -> list[Collective]:
    """Per decode step: every layer all-gathers its partial output and, apart, its log-sum-exp (fp32) of one token."""
    per_rank = batch * spec.heads * (spec.head_dim + 1) * 4
    return [Collective("all-gather partial out + lse", (N - 1) * per_rank, spec.layers, 2 * (N - 1))]


# What each collective-issuing op of lcc.ops.context_parallel receives per call, from its arguments (tensor
# arguments as symbolic shapes, ``itemsize`` of the first): the same ring all-gathers as above, for the N it names.
def _kv_gather(k, v, ranks: int, itemsize: int) -> Collective:
    return Collective("all-gather K/V", (ranks - 1) * (prod(k) + prod(v)) * itemsize, 1, 2 * (ranks - 1))


def _seq_gather(x, ranks: int, itemsize: int) -> Collective:
    return Collective("all-gather hidden", (ranks - 1) * prod(x) * itemsize, 1, ranks - 1)


def _last_gather(x, dim: int, ranks: int, itemsize: int) -> Collective:
    """One row of ``x`` (its ``dim`` taken as 1) from every rank."""
    return Collective("all-gather last hidden", (ranks - 1) * prod(x) / x[dim] * itemsize, 1, ranks - 1)


def _partials_gather(q, v, ranks: int) -> Collective:
    """Each rank's partial output [B, Hq, 1, Dv] and log-sum-exp [B, Hq, 1], fp32 whatever the cache dtype."""
    B, Hq = q[0], q[1]
    return Collective("all-gather partial out + lse", (ranks - 1) * B * Hq * (v[-1] + 1) * 4, 1, 2 * (ranks - 1))


ISSUES = {"cp_attention": _kv_gather, "cp_gather_seq": _seq_gather, "cp_gather_last": _last_gather,
          "cp_decode_attention": _partials_gather}


def _bind(fn, node, shape) -> dict:
    """``fn``'s parameters from ``node``'s schema arguments: tensors as ``shape(tensor)``, ``itemsize`` as the
    first tensor parameter's, the rest as they are."""
    from lcc.graph import named_args

    args, kwargs, first = named_args(node), {}, None
    for p in inspect.signature(fn).parameters.values():
        a = args.get(p.name)
        if is_tensor_node(a):
            kwargs[p.name] = shape(a)
            first = first or a
        elif p.name in args:
            kwargs[p.name] = a
    if "itemsize" in inspect.signature(fn).parameters and first is not None:
        kwargs["itemsize"] = first.meta["val"].dtype.itemsize
    return kwargs


def entry_collectives(gm) -> list[Collective]:
    """The collectives one call of entry graph ``gm`` issues per rank, equal ones counted as calls; shapes in
    L (the entry's sequence dim, as :mod:`lcc.cost.graph` names it)."""
    nodes = list(gm.graph.nodes)
    rename = {}
    for n in nodes:
        val = n.meta.get("val")
        if n.op == "placeholder" and hasattr(val, "shape"):
            rename.update({s: L for d in val.shape if hasattr(d, "node") for s in d.node.expr.free_symbols})

    def shape(n) -> tuple:
        return tuple(dim_expr(d, rename) for d in n.meta["val"].shape)

    counts = Counter()
    for n in nodes:
        if n.op == "call_function" and op_name(n.target)[0] == "lcc" and op_name(n.target)[1] in ISSUES:
            fn = ISSUES[op_name(n.target)[1]]
            counts[fn(**_bind(fn, n, shape))] += 1
    return [Collective(c.name, c.bytes_in, c.calls * k, c.steps) for c, k in counts.items()]


def total_bytes(collectives: list[Collective]) -> sympy.Expr:
    return sympy.simplify(sum(c.bytes_in * c.calls for c in collectives))


def comm_time(collectives: list[Collective], profile) -> sympy.Expr:
    """Seconds one rank spends in these collectives (not overlapped with compute)."""
    _, bandwidth, latency = link_of(profile)
    return sum(c.calls * (c.bytes_in / bandwidth + c.steps * latency) for c in collectives)


def memory_per_rank(spec, itemsize: int, weight_itemsize: int | None = None, batch: int = 1) -> dict:
    """Bytes held per rank: its cache share (L/N tokens + 4 slots, each with an int64 position code), the
    gathered K/V of one layer during prefill, and the whole weights (replicated)."""
    cache = spec.layers * (L / N + 4) * (kv_bytes_per_token(spec, itemsize, batch) + 8 * batch)
    gathered = L * kv_bytes_per_token(spec, itemsize, batch)
    weights = spec.params * (weight_itemsize or itemsize)
    return {"cache": cache, "gathered": gathered, "weights": weights, "total": cache + gathered + weights}


def prefill_flops_per_rank(spec, batch: int = 1) -> sympy.Expr:
    """Linear layers on L/N tokens (2 x params per token) plus 1/N of the causal attention pairs."""
    attention = spec.layers * spec.heads * 4 * spec.head_dim * L * (L + 1) / 2
    return batch * (2 * spec.params * L + attention) / N


def predict_prefill(spec, length: int, ranks: int, profile, dtype: str = "bfloat16", activations: float = 0.0) -> dict:
    """Per-rank figures of a ``length``-token prefill on ``ranks`` devices of ``profile``: seconds of compute
    and of communication, the communication share, bytes received and held (``activations``: the program's
    working memory for the rank's share of tokens, added to the total)."""
    import torch

    itemsize = getattr(torch, dtype).itemsize
    at = {L: length, N: ranks}
    colls = prefill_collectives(spec, itemsize)
    compute = float(prefill_flops_per_rank(spec).subs(at)) / profile.peak_flops("matmul", dtype)
    comm = float(comm_time(colls, profile).subs(at)) if ranks > 1 else 0.0
    memory = {k: float(sympy.sympify(v).subs(at)) for k, v in memory_per_rank(spec, itemsize).items()}
    if ranks == 1:  # one device: the plain cache, nothing gathered
        memory["cache"] = spec.layers * length * kv_bytes_per_token(spec, itemsize)
        memory["gathered"] = 0.0
        memory["total"] = memory["cache"] + memory["weights"]
    memory["activations"] = float(activations)
    memory["total"] += memory["activations"]
    return {"ranks": ranks, "length": length, "compute_s": compute, "comm_s": comm, "time_s": compute + comm,
            "comm_share": comm / (compute + comm), "bytes_in": float(total_bytes(colls).subs(at)) if ranks > 1 else 0.0,
            "memory": memory, "link": link_of(profile)[0]}


def measure_loopback(mbytes: int = 64) -> tuple[float, float]:
    """(bytes/s into one rank of an all-gather of ``mbytes`` MB per rank, seconds per message of a one-float
    all-gather), each best of 3 (the latency over its ring steps); run it in each rank of a process group:
    ``lcc.distributed.launch.launch(2, measure_loopback)`` gives the CPU's loopback link."""
    import time

    import torch
    import torch.distributed as dist

    world = dist.get_world_size()

    def best(x) -> float:
        out = torch.empty(world * x.numel())
        seconds = float("inf")
        for _ in range(3):
            dist.barrier()
            start = time.perf_counter()
            dist.all_gather_single(out, x)
            seconds = min(seconds, time.perf_counter() - start)
        return seconds

    big = torch.ones(mbytes * 2**20 // 4)
    return (world - 1) * big.numel() * 4 / best(big), best(torch.ones(1)) / (world - 1)


def ranks_needed(spec, length: int, profile, dtype: str = "bfloat16", most: int = 1024,
                 budget: float | None = None, activations=None) -> int | None:
    """The fewest ranks whose per-rank memory (:func:`memory_per_rank`, plus ``activations(N)`` bytes if given)
    fits ``budget`` (default: ``profile``'s device memory) at ``length`` tokens: 1 when one device holds it,
    None when even ``most`` (at most one rank per two tokens, the head-tail split's limit) do not.  Memory per
    rank falls with N: a bisection."""
    budget = budget or profile.memory_bytes
    act = activations or (lambda n: 0.0)
    fits = lambda n: predict_prefill(spec, length, n, profile, dtype, act(n))["memory"]["total"] <= budget  # noqa: E731
    most = max(1, min(most, length // 2))
    if fits(1):
        return 1
    if not fits(most):
        return None
    low, high = 1, most  # low does not fit, high does
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def proposal(spec, length: int, profile, budget: float | None = None, devices: int | None = None,
             dtype: str = "bfloat16", activations=None) -> dict:
    """What ``lcc plan`` says past one device: the ranks ``length`` tokens need within ``budget`` per device
    (:func:`ranks_needed`), and :func:`predict_prefill` per rank at 1 rank, at that count and at ``devices``
    (each with ``fits``).  ``ranks``: the count to run, the fewest that fit, or None when they are more than
    ``devices`` (or than any count).  ``activations(N)``: the program's working bytes per rank at N ranks."""
    budget = budget or profile.memory_bytes
    act = activations or (lambda n: 0.0)
    needed = ranks_needed(spec, length, profile, dtype, budget=budget, activations=act)
    rows = []
    for n in sorted({1, needed or 1, devices or 1}):
        row = predict_prefill(spec, length, n, profile, dtype, act(n))
        rows.append(row | {"fits": row["memory"]["total"] <= budget})
    usable = needed is not None and (devices is None or needed <= devices)
    return {"length": length, "budget": budget, "devices": devices, "ranks_needed": needed,
            "ranks": needed if usable else None, "per_rank": rows}
