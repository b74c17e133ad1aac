"""ONNX lowering of ``lcc.rerope_attention``: the papers' naive form (one score matrix per branch), for export.

The op's reference loops over query chunks in Python, which ``torch.export`` cannot trace with
a dynamic sequence length; :func:`prepare` points each node at
:func:`lcc.ops.rerope.rerope_for_export` instead, the same arithmetic as one traced
expression: q and k rotated with ``lcc.rope`` to
each branch's positions (:func:`lcc.ops.remap.positions`: ReRoPE's in-window and rectified
ones, Self-Extend's neighbour and grouped ones, DCA's intra-, successive- and inter-chunk
ones; these lower to ``RotaryEmbedding``), one grouped score matrix per branch selected per
pair by :func:`lcc.ops.remap.branch`, the mask predicate and kv_len in the graph, softmax,
MatMul with v.  Decode attends over the whole cache under the mask (keys past kv_len hidden).
"""

from __future__ import annotations

import torch.fx

from lcc.ops import remap
from lcc.ops.rerope import export_unsupported, rerope_for_export


def prepare(node: torch.fx.Node, args: dict, capacity: int) -> str:
    node.target = rerope_for_export
    node.args, node.kwargs = tuple(args.values()), {}
    return (f"{args['kind']}: {remap.BRANCHES[args['kind']]} RotaryEmbedding'd score matrices selected per pair "
            "+ mask predicate + MatMul/Softmax")


rerope_unsupported = export_unsupported
