"""Reading lcc op nodes in FX graphs: the op handles and the helpers ops, passes, cost and backends share.

This module sits below all of them (it imports only torch and :mod:`lcc.ops`), so a backend or
the cost model reads a node's arguments without importing a pass.  :mod:`lcc.passes.graph`
adds the graph-surgery helpers only passes need.
"""

from __future__ import annotations

import re

import torch
import torch.fx

import lcc.ops  # noqa: F401  (registers torch.ops.lcc.*)

ATTENTION = torch.ops.lcc.attention.default
ROPE = torch.ops.lcc.rope.default

_LAYER_RE = re.compile(r"layers\.(\d+)\.")


def lcc_nodes(gm: torch.fx.GraphModule, target) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def layer_of(node: torch.fx.Node) -> int | None:
    """The decoder layer a node came from, read from the module path export recorded."""
    if "lcc_layer" in node.meta:
        return node.meta["lcc_layer"]
    for path, _ in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
        m = _LAYER_RE.search(path + ".")
        if m:
            return int(m.group(1))
    return None


def full_args(node: torch.fx.Node) -> list:
    """The node's arguments in schema order with defaults filled in (kwargs folded in)."""
    schema = node.target._schema
    args = list(node.args)
    for arg in schema.arguments[len(args):]:
        if arg.name in node.kwargs:
            args.append(node.kwargs[arg.name])
        else:
            args.append(arg.default_value if arg.has_default_value() else None)
    return args


def named_args(node: torch.fx.Node) -> dict:
    """``{name: value}`` of every schema argument of an op node, defaults filled in (FX nodes stay nodes)."""
    return dict(zip((a.name for a in node.target._schema.arguments), full_args(node)))


def set_args(node: torch.fx.Node, **changes) -> None:
    """Set named schema arguments of an lcc op node."""
    schema = node.target._schema
    names = [a.name for a in schema.arguments]
    args = full_args(node)
    for key, value in changes.items():
        args[names.index(key)] = value
    node.args = tuple(args)
    node.kwargs = {}


def get_arg(node: torch.fx.Node, name: str):
    return named_args(node)[name]


__all__ = ["ATTENTION", "ROPE", "lcc_nodes", "layer_of", "full_args", "named_args", "set_args", "get_arg"]
