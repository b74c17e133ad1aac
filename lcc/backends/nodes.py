"""The walk every lowering backend shares: each lcc node lowers natively or falls back, recorded.

For each node calling a declared lcc op, the backend's :class:`lcc.ops.registry.Lowering` says
whether it applies (``unsupported(args) -> reason | None``).  A node that lowers is prepared by
the lowering's ``prepare`` (if any); a node that does not is pointed at a decomposition the
backend chooses (the op's reference, its eager body, or none: the op stays an opaque call).
Nothing falls back silently: every node gets a record saying which way it went and why.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.fx

from lcc.graph import named_args
from lcc.ops import registry


def prepare_nodes(gm: torch.fx.GraphModule, backend: str, decompose: Callable | None = None,
                  decomposition: str = "reference", context: Any = None) -> list[dict]:
    """Lower or fall back every lcc op node of ``gm`` (edited in place) for ``backend``; one record per node.

    ``decompose(opdef) -> callable | None`` gives the function a fallback node calls instead (its
    schema arguments positionally), named ``decomposition`` in the record; without one the node is
    left as it is.  ``context`` is handed to each lowering's ``prepare(node, args, context)``.
    A record is ``{"op", "node", "layer", "fallback", "how"}`` plus, for a fallback, ``"why"`` and
    ``"as"`` (the decomposition, or ``"op"`` when the node was left as the op), in graph order.
    """
    by_op = {opdef.op: opdef for opdef in registry.ops().values()}
    records = []
    for node in list(gm.graph.nodes):
        opdef = by_op.get(node.target) if node.op == "call_function" else None
        if opdef is None:
            continue
        lowering = opdef.lowerings.get(backend)
        args = named_args(node)
        why = f"no {backend} lowering" if lowering is None else lowering.unsupported(args)
        record = {"op": opdef.name, "node": node.name, "layer": node.meta.get("lcc_layer")}
        if why:
            fn = decompose(opdef) if decompose is not None else None
            if fn is not None:
                node.target, node.args, node.kwargs = fn, tuple(args.values()), {}
            records.append({**record, "fallback": True, "how": None, "why": why,
                            "as": decomposition if fn is not None else "op"})
            continue
        how = lowering.prepare(node, args, context) if lowering.prepare else lowering.how
        records.append({**record, "fallback": False, "how": how})
    gm.graph.lint()
    gm.recompile()
    return records


def native_hows(records: list[dict]) -> dict[str, str]:
    """``{op: how}`` for each op with a node that lowered natively (its distinct ways, joined)."""
    hows: dict[str, list[str]] = {}
    for r in records:
        if not r["fallback"] and r["how"] not in hows.setdefault(r["op"], []):
            hows[r["op"]].append(r["how"])
    return {op: "; ".join(h) for op, h in hows.items() if h}


__all__ = ["prepare_nodes", "native_hows"]
