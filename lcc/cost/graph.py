"""Walk one entry graph: symbolic shapes, per-node costs, and a liveness walk for peak memory.

Shapes come from the program itself: ``node.meta["val"]`` (the fake tensors ``torch.export``
leaves on every node) with the ``seq`` SymInt renamed ``L``; the cache's concrete capacity
becomes ``C`` on every tensor that flows from a cache input and keeps that extent on dim 2.

Peak activations: a liveness walk over storages, in graph order, as the FX-generated code
frees them (each value is dropped after its last use; a view keeps its base alive).  At
each node the live bytes are the storages allocated so far and still used later, plus the
node's transient working set (attention scores, matmul broadcast copies).  Inputs (the
caller's token ids and KV cache) and weights are not activations; graph outputs live to
the end.  Each step's live bytes are kept as counts of distinct symbolic terms, so the
peak at any length is one matrix-vector product.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch
import torch.fx

from lcc.cost.nodes import Ctx, NodeCost, is_tensor_node, node_cost
from lcc.cost.symbols import C, L, ZERO, compile_expr, dim_expr


@dataclass
class EntryCost:
    """The costs of one entry point: per node, plus the liveness matrix for peak activations."""

    entry: str
    nodes: list[NodeCost]
    terms: list[sympy.Expr]  # distinct byte-size expressions
    live: np.ndarray  # [steps, terms]: how many of each term are live at each step
    weights: dict[int, int] = field(default_factory=dict)  # storage id -> bytes
    unpriced: list[str] = field(default_factory=list)
    _fns: list = field(default_factory=list, repr=False)
    _groups: list = field(default_factory=list, repr=False)

    @property
    def flops(self) -> sympy.Expr:
        return sympy.Add(*(n.flops for n in self.nodes))

    @property
    def bytes(self) -> sympy.Expr:
        return sympy.Add(*(n.bytes for n in self.nodes))

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())

    def _term_values(self, L_, K_=None, C_=None) -> np.ndarray:
        K_ = L_ if K_ is None else K_
        C_ = L_ if C_ is None else C_
        if not self._fns:
            self._fns = [compile_expr(t) for t in self.terms]
        return np.array([f(L_, K_, C_) for f in self._fns], dtype=np.float64)

    def peak(self, L_, K_=None, C_=None) -> tuple[float, int]:
        """(peak live activation bytes, the index of the node where it occurs)."""
        if not len(self.terms):
            return 0.0, 0
        live = self.live @ self._term_values(L_, K_, C_)
        i = int(np.argmax(live))
        return float(live[i]), i

    def peak_expr(self, step: int) -> sympy.Expr:
        """The live bytes at one step as a formula."""
        return sympy.Add(*(int(c) * t for c, t in zip(self.live[step], self.terms) if c))

    def kernel_groups(self):
        """[(op, unit, dtype, flops fn, bytes fn, count)]: identical kernels counted once."""
        if not self._groups:
            counts = Counter((n.op, k.unit, k.dtype, k.flops, k.bytes) for n in self.nodes for k in n.kernels)
            self._groups = [(op, unit, dt, _compiled(f), _compiled(b), c) for (op, unit, dt, f, b), c in counts.items()]
        return self._groups

    def time(self, profile, L_, K_=None, C_=None, by_op: bool = False):
        """Roofline time: each kernel takes max(flops / peak FLOP/s, bytes / bandwidth), summed."""
        K_ = L_ if K_ is None else K_
        C_ = L_ if C_ is None else C_
        total, ops = 0.0, defaultdict(float)
        for op, unit, dt, f, b, count in self.kernel_groups():
            t = count * max(f(L_, K_, C_) / profile.peak_flops(unit, dt), b(L_, K_, C_) / profile.bandwidth)
            total += t
            ops[op] += t
        return (total, dict(ops)) if by_op else total


# every candidate the planner prices has the same few kernels: each expression is compiled once
_compiled = functools.lru_cache(maxsize=100_000)(compile_expr)


def capacity_dims(capacity: int | None, layout=None) -> dict[int, sympy.Expr]:
    """The sizes a cache tensor's dim 2 takes at ``capacity``, each with its formula in ``C``: the capacity
    itself and, for a quantized layout, its per-group statistics' ``ceil(capacity / group)``; none for a ring
    (sink) cache, whose size is fixed.  Else the priced memory moved with the capacity the program was captured
    at: kv-quant's statistics stayed concrete, and a ring as long as the capture's capacity grew with ``C``."""
    if capacity is None or getattr(layout, "ring", None) is not None:
        return {}
    dims = {capacity: C}
    quant = getattr(layout, "quant", None)
    if quant is not None:
        for which in ("k", "v"):
            for (_, at_c, _), (_, at_n, _) in zip(quant.part_specs(which, 1, 1, C, layout.head_dim),
                                                  quant.part_specs(which, 1, 1, capacity, layout.head_dim)):
                expr = sympy.sympify(at_c[2])
                if expr.has(C) and int(at_n[2]) not in dims:
                    dims[int(at_n[2])] = expr
    return dims


def _symbolic_shapes(gm: torch.fx.GraphModule, capacity: int | None, layout=None) -> dict:
    """node name -> tuple of sympy dims: the seq SymInt renamed L, the cache capacity C (or a formula in C,
    :func:`capacity_dims`) on dim 2 of cache values."""
    rename, shapes, cached = {}, {}, set()
    grows = capacity_dims(capacity, layout)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in placeholders:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            for d in val.shape:
                if isinstance(d, torch.SymInt):
                    rename.update({s: L for s in d.node.expr.free_symbols})
    for i, n in enumerate(placeholders):
        val = n.meta.get("val")
        if i > 0 and isinstance(val, torch.Tensor) and val.dim() >= 3 and _grown(val.shape[2], grows):
            cached.add(n.name)
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        if n.op == "call_function" and isinstance(val, (list, tuple)) and \
                any(a.name in cached for a in n.all_input_nodes):
            cached.add(n.name)  # a multi-output op on the cache: its getitems decide per tensor
        if n.op == "call_function" and is_tensor_node(n) and val.dim() >= 3 and _grown(val.shape[2], grows) \
                and any(a.name in cached for a in n.all_input_nodes):
            cached.add(n.name)
        if isinstance(val, torch.Tensor):
            dims = [dim_expr(d, rename) for d in val.shape]
            if n.name in cached:
                dims[2] = grows[int(val.shape[2])]
            shapes[n.name] = tuple(dims)
        elif isinstance(val, (list, tuple)) and val and all(isinstance(v, torch.Tensor) for v in val):
            grown = n.name in cached
            shapes[n.name] = [tuple(grows[int(d)] if (grown and i == 2 and v.dim() >= 3 and _grown(d, grows))
                                    else dim_expr(d, rename) for i, d in enumerate(v.shape)) for v in val]
    return shapes


def _grown(d, grows: dict) -> bool:
    """A concrete dim whose size is one :func:`capacity_dims` lists (a symbolic one never is)."""
    return not isinstance(d, torch.SymInt) and int(d) in grows


def _weights(gm: torch.fx.GraphModule) -> dict[int, int]:
    out = {}
    for n in gm.graph.nodes:
        if n.op != "get_attr":
            continue
        obj = gm
        for part in n.target.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor):
            out[obj.untyped_storage()._cdata] = obj.untyped_storage().nbytes()  # the StorageImpl: distinct for fake tensors too
    return out


def entry_cost(gm: torch.fx.GraphModule, entry: str, capacity: int | None, device: str = "cpu",
               layout=None) -> EntryCost:
    if layout is not None:
        from lcc.cost.meta import with_values

        gm = with_values(gm, layout)
    ctx = Ctx(shapes=_symbolic_shapes(gm, capacity, layout), device=device, prefill=entry.startswith("prefill"))
    nodes = list(gm.graph.nodes)
    index = {n.name: i for i, n in enumerate(nodes)}
    costs: list[NodeCost] = []
    storage: dict[str, str | None] = {}  # node -> the storage (allocating node) it refers to
    alloc: dict[str, sympy.Expr] = {}
    for n in nodes:
        if n.op != "call_function":
            costs.append(NodeCost(n.name, n.op))
            storage[n.name] = None
            continue
        c = node_cost(n, ctx)
        c.layer = n.meta.get("lcc_layer")
        costs.append(c)
        if c.alias is not None:
            storage[n.name] = storage.get(c.alias)
        elif c.out_bytes != 0:
            storage[n.name] = n.name
            alloc[n.name] = sympy.sympify(c.out_bytes)
        else:
            storage[n.name] = None
    last = {s: index[s] for s in alloc}
    for n in nodes:
        for a in n.all_input_nodes:
            s = storage.get(a.name)
            if s is not None:
                last[s] = max(last[s], index[n.name])
    terms: dict[sympy.Expr, int] = {}

    def term(e) -> int:
        return terms.setdefault(e, len(terms))

    events = defaultdict(list)  # step -> [(term, +1/-1)]
    for s, size in alloc.items():
        events[index[s]].append((term(size), 1))
        events[last[s] + 1].append((term(size), -1))
    work = {i: term(sympy.sympify(c.work)) for i, c in enumerate(costs) if c.work != 0}
    live = np.zeros((len(nodes), len(terms)), dtype=np.int32)
    cur = np.zeros(len(terms), dtype=np.int32)
    for i in range(len(nodes)):
        for t, d in events.get(i, ()):
            cur[t] += d
        live[i] = cur
        if i in work:
            live[i, work[i]] += 1
    unpriced = sorted({c.op for c in costs if c.note.startswith("unpriced")})
    return EntryCost(entry, costs, list(terms), live, _weights(gm), unpriced)
