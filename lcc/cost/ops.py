"""Cost rules for the lcc op vocabulary: each op's own cost function (``lcc.ops.registry``) bound to a node.

``lcc.attention`` and ``lcc.cp_attention`` are priced per ``algo`` (:mod:`lcc.cost.attention`);
every other lcc op through its ``OpDef.cost``, whose parameters are bound by name from the node:
the shape roles of the vocabulary (``q``/``x`` [B, H, S, D], ``k`` [B, Hkv, Sk, D], ``v`` [.., Dv]),
``R`` (rotated channels, 2 * len(inv_freq)), ``itemsize``, and any schema argument of the
same name (``mask``, ``feature_map``...; a tensor outside the roles as its shape tuple, and
then ``itemsize`` as the first such tensor's when no role gives it: ``cp_shard``'s ids).  An op
whose cost cannot be bound is priced as elementwise and reported as unpriced.  Ops with an unusual signature add a rule with
:func:`lcc.cost.nodes.register_rule`.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import sympy

from lcc.cost.attention import attention_node_cost
from lcc.cost.nodes import Ctx, Kernel, NodeCost, RULES, elementwise, is_tensor_node, tensor_args
from lcc.ops import registry


def _schema_args(node) -> dict:
    from lcc.graph import named_args

    return named_args(node)


@lru_cache(maxsize=1024, typed=True)
def _same(a: sympy.Expr, b: sympy.Expr) -> bool:
    """``a == b`` as formulas (sympy's simplify: slow, so asked once per pair)."""
    return sympy.simplify(a - b) == 0


def attention_rule(node, ctx: Ctx) -> NodeCost:
    a = _schema_args(node)
    q, k, v = a["q"], a["k"], a["v"]
    B, Hq, Sq, D = ctx.shape(q)
    _, Hkv, Sk, _ = ctx.shape(k)
    Dv = ctx.shape(v)[-1]
    dtype = str(ctx.dtype(node)).removeprefix("torch.")
    self_attention = a["kv_len"] is None and _same(Sq, Sk)
    kernels, work = attention_node_cost(B, Hq, Hkv, Sq, ctx.keys(node, Sk), D, Dv, a["mask"], a["algo"],
                                        ctx.device, ctx.itemsize(q), dtype, self_attention)
    return NodeCost(node.name, "", kernels=kernels, out_bytes=ctx.nbytes(node), work=work,
                    note=f"{a['mask']} {a['algo']}")


def cp_attention_rule(node, ctx: Ctx) -> NodeCost:
    """A context-parallel rank's prefill attention by its ``algo``, as ``lcc.ops.context_parallel`` runs it: the
    busiest rank's local chunks, each one attention call against the gathered keys up to its end (the queries
    the last of those keys: on the CPU, ``flash`` is the fused suffix path), after the all-gather's output is
    written and put in position order (``cp_attention_cost``'s traffic; the bytes over the link are
    :mod:`lcc.cost.comm`'s).  Held: the gathered K/V and the busiest call's working set."""
    from lcc.ops.context_parallel import busiest_chunk_ends, chunks_per_rank, gather_traffic

    a = _schema_args(node)
    q, k, v = a["q"], a["k"], a["v"]
    B, Hq, Sq, D = ctx.shape(q)
    _, Hkv, Sk, _ = ctx.shape(k)
    Dv = ctx.shape(v)[-1]
    itemsize, dtype = ctx.itemsize(q), str(ctx.dtype(node)).removeprefix("torch.")
    ranks, per = a["ranks"], chunks_per_rank(a["balance"])
    chunk, Sk = Sq / per, ctx.keys(node, Sk)
    kernels, work = [], sympy.Integer(0)
    for end in busiest_chunk_ends(Sk / per, ranks, a["balance"]):
        ks, w = attention_node_cost(B, Hq, Hkv, chunk, end, D, Dv, a["mask"], a["algo"], ctx.device, itemsize,
                                    dtype, self_attention=True, suffix=True)
        kernels.extend(ks)
        work = sympy.Max(work, w)
    moved, gathered = gather_traffic(B, Hq, Hkv, Sq, Sk, D, Dv, ranks, itemsize)
    kernels.append(Kernel(0, moved, "vector", dtype))
    return NodeCost(node.name, "", kernels=tuple(kernels), out_bytes=ctx.nbytes(node), work=gathered + work,
                    note=f"{a['mask']} {a['algo']} x{ranks} ranks")


def remap_attention_rule(node, ctx: Ctx) -> NodeCost:
    """``lcc.rerope_attention`` by its declared cost (the kernels' work) and, on the CPU, the fused kernel's
    vector work too: the CPU path scores each run of keys with PyTorch's flash kernel (``_causal_runs``), the
    same scale, max, exp and sum per kept pair (``SDPA_VECTOR_FLOPS``) that ``flash`` on the CPU is priced
    with, so a remapped attention is never priced below the plain flash attention it adds rotations and branch
    edges to (it measures 1.13-1.33x flash per token on smollm2 at 16k: docs/rope.md)."""
    from lcc.cost.attention import SDPA_VECTOR_FLOPS
    from lcc.ops.attention import mask_pairs

    cost = generic_rule(node, ctx)
    if ctx.device != "cpu" or cost.note.startswith("unpriced"):
        return cost
    a = _schema_args(node)
    B, Hq, Sq, _ = ctx.shape(a["q"])
    Sk = ctx.keys(node, ctx.shape(a["k"])[2])
    pairs = mask_pairs(a.get("mask", "causal"), Sq, Sk)
    vector = Kernel(SDPA_VECTOR_FLOPS * B * Hq * pairs, sympy.Integer(0), "vector",
                    str(ctx.dtype(node)).removeprefix("torch."))
    cost.kernels = (*cost.kernels, vector)
    return cost


def _roles(node, ctx: Ctx, args: dict) -> dict:
    """Shape-role values of the vocabulary's conventions, as far as the node has them."""
    tensors = [t for t in tensor_args(node)]
    roles: dict = {}
    first = next((args[a] for a in ("q", "x") if is_tensor_node(args.get(a))), tensors[0] if tensors else None)
    if first is not None and len(ctx.shape(first)) == 4:
        B, H, S, D = ctx.shape(first)
        roles.update(B=B, H=H, Hq=H, Hkv=H, S=S, Sq=S, Sk=S, D=D, Dv=D, itemsize=ctx.itemsize(first))
    k = _first(args, "k", "k_parts", 0)
    if k is not None and len(ctx.shape(k)) == 4:
        _, Hkv, Sk, _ = ctx.shape(k)
        roles.update(Hkv=Hkv, Sk=ctx.keys(node, Sk))
    v = _first(args, "v", "v_parts", -1)
    if v is not None:
        roles["Dv"] = ctx.shape(v)[-1]
    if "inv_freq" in args and is_tensor_node(args["inv_freq"]):
        roles["R"] = 2 * ctx.shape(args["inv_freq"])[-1]
    return roles


def _first(args: dict, name: str, parts: str, index: int):
    """The tensor ``name``, or element ``index`` of the tensor list ``parts`` (quantized caches)."""
    if is_tensor_node(args.get(name)):
        return args[name]
    lst = args.get(parts)
    if isinstance(lst, (list, tuple)) and lst and is_tensor_node(lst[index]):
        return lst[index]
    return None


def generic_rule(node, ctx: Ctx) -> NodeCost:
    """Call the op's declared cost function with parameters bound by name."""
    name = str(node.target).split(".")[1]
    opdef = registry.ops().get(name)
    if opdef is None or opdef.cost is None:
        cost = elementwise(node, ctx)
        cost.note = "unpriced"
        return cost
    args = _schema_args(node)
    roles = _roles(node, ctx, args)
    kwargs, shaped = {}, None
    for p in inspect.signature(opdef.cost).parameters.values():
        if p.name in roles:
            kwargs[p.name] = roles[p.name]
        elif p.name in args and is_tensor_node(args[p.name]):  # a tensor outside the roles: its shape
            kwargs[p.name] = tuple(ctx.shape(args[p.name]))
            shaped = shaped or args[p.name]
        elif p.name in args:
            kwargs[p.name] = args[p.name]
        elif p.default is inspect.Parameter.empty:
            cost = elementwise(node, ctx)
            cost.note = f"unpriced: cannot bind {p.name!r} of {name}'s cost"
            return cost
    if shaped is not None and "itemsize" not in roles and "itemsize" in inspect.signature(opdef.cost).parameters:
        kwargs["itemsize"] = ctx.itemsize(shaped)
    flops, moved, held = _declared_cost(opdef.cost, kwargs)
    dtype = str(ctx.dtype(node)).removeprefix("torch.")
    unit = "matmul" if "attention" in name else "vector"
    return NodeCost(node.name, "", kernels=(Kernel(flops, moved, unit, dtype),), out_bytes=ctx.nbytes(node),
                    work=held)


_DECLARED: dict = {}  # (cost function, its arguments) -> (flops, moved, held) as sympy expressions


def _declared_cost(cost, kwargs: dict) -> tuple:
    """``cost(**kwargs)`` as sympy expressions, memoised when the arguments are hashable (shapes, strings):
    every layer of every candidate the planner prices binds the same few."""
    try:
        key = (cost, tuple((k, type(v), v) for k, v in sorted(kwargs.items())))  # typed: 2 and Integer(2) differ
        hash(key)
    except TypeError:
        key = None
    if key is None or key not in _DECLARED:
        value = tuple(sympy.sympify(x) for x in cost(**kwargs))
        if key is None:
            return value
        _DECLARED[key] = value
    return _DECLARED[key]


def install() -> None:
    """Price every declared lcc op: attention by algo, the rest through their own cost functions."""
    for name in registry.ops():
        RULES.setdefault(("lcc", name), generic_rule)
    RULES[("lcc", "attention")] = attention_rule
    RULES[("lcc", "cp_attention")] = cp_attention_rule
    RULES[("lcc", "rerope_attention")] = remap_attention_rule


def rule_for_lcc(name: str):
    install()
    return RULES.get(("lcc", name), generic_rule)
