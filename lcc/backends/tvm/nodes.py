"""Reading an lcc op's arguments off an FX node, by schema name with defaults filled in."""

from __future__ import annotations

import torch.fx

from lcc.graph import named_args as op_args


def relax_args(node: torch.fx.Node, importer) -> dict:
    """:func:`op_args` with FX nodes replaced by the Relax values the importer gave them."""
    return {k: importer.env[v] if isinstance(v, torch.fx.Node) else v for k, v in op_args(node).items()}


def shape(x) -> list:
    """The dims of a Relax tensor value (ints as IntImm, dynamic dims as TIR vars)."""
    return list(x.ty.shape.values)


def dtype(x) -> str:
    return str(x.ty.dtype)
