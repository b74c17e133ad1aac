"""Reading an lcc op's arguments off an FX node, by schema name with defaults filled in."""

from __future__ import annotations

import torch.fx


def op_args(node: torch.fx.Node) -> dict:
    """``{name: value}`` of every schema argument (FX nodes stay nodes; defaults filled in)."""
    schema = node.target._schema
    values = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            values[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            values[arg.name] = node.kwargs[arg.name]
        else:
            values[arg.name] = arg.default_value if arg.has_default_value() else None
    return values


def relax_args(node: torch.fx.Node, importer) -> dict:
    """:func:`op_args` with FX nodes replaced by the Relax values the importer gave them."""
    return {k: importer.env[v] if isinstance(v, torch.fx.Node) else v for k, v in op_args(node).items()}


def shape(x) -> list:
    """The dims of a Relax tensor value (ints as IntImm, dynamic dims as TIR vars)."""
    return list(x.ty.shape.values)


def dtype(x) -> str:
    return str(x.ty.dtype)
