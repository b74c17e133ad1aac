"""TVM lowering of ``lcc.rerope_attention`` (every mapping kind): the papers' naive form, imported as Relax.

The op's reference loops over query chunks in Python, which ``torch.export`` cannot trace with
a dynamic sequence length, and its eager body picks key ranges from data; :func:`prepare`
points each node at :func:`lcc.ops.rerope.rerope_for_export` instead (one score matrix per
branch, selected per pair, the mask predicate and kv_len as tensor expressions), whose
``lcc.rope`` nodes TVM lowers with its own rope converter and whose ATen ops its frontend
imports.  The module registers the lowering when imported (as the Triton kernels do).
"""

from __future__ import annotations

import torch.fx

from lcc.ops import registry, remap
from lcc.ops.registry import Lowering
from lcc.ops.rerope import export_unsupported, rerope_for_export


def prepare(node: torch.fx.Node, args: dict, context=None) -> str:
    node.target = rerope_for_export
    node.args, node.kwargs = tuple(args.values()), {}
    return f"{args['kind']}: {remap.BRANCHES[args['kind']]} rope'd score matrices selected per pair, Relax softmax"


rerope_unsupported = export_unsupported


LOWERING = Lowering(None, rerope_unsupported, "rope'd score matrices per branch selected per pair, Relax softmax",
                    prepare)
registry.register_lowering("rerope_attention", "tvm", LOWERING)

__all__ = ["prepare", "rerope_unsupported", "LOWERING"]
