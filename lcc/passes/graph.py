"""Small helpers to find and edit lcc op nodes in entry graphs."""

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


def parse_layers(text: str, n_layers: int) -> set[int]:
    """``all`` or ``0-5,12`` -> a set of layer indices (checked against the model)."""
    from lcc.errors import UsageError

    if text in ("", "all"):
        return set(range(n_layers))
    out: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        try:
            rng = range(int(lo), int(hi) + 1) if dash else range(int(lo), int(lo) + 1)
        except ValueError:
            raise UsageError(f"bad layer list {text!r}: use e.g. layers=0-5,12 or layers=all")
        for i in rng:
            if not 0 <= i < n_layers:
                raise UsageError(f"layer {i} in {text!r} is out of range: the model has layers 0-{n_layers - 1}")
            out.add(i)
    return out
