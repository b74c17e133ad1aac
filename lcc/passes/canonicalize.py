"""Canonicalization: check and normalise the lcc ops capture produced.

After capture, each attention of each layer must be exactly one ``lcc.attention``
node and each rotary application one ``lcc.rope`` node.  This step verifies that,
records each node's layer, writes every op's arguments out in full (so passes edit
them by name) and removes dead code.  Later stages rely on this form only.
"""

from __future__ import annotations

from collections import Counter

from lcc.capture.program import Program
from lcc.passes.graph import ATTENTION, ROPE, full_args, layer_of, lcc_nodes


class CanonicalFormError(RuntimeError):
    pass


def canonicalize(program: Program) -> Program:
    graphs = program.copy_graphs()
    n_layers = program.spec.layers
    for name, gm in graphs.items():
        for target, per_layer in ((ATTENTION, 1), (ROPE, 2)):
            nodes = lcc_nodes(gm, target)
            for node in nodes:
                layer = layer_of(node)
                if layer is None:
                    raise CanonicalFormError(f"{name}: {node.name} has no decoder layer")
                node.meta["lcc_layer"] = layer
                node.args, node.kwargs = tuple(full_args(node)), {}
            counts = Counter(n.meta["lcc_layer"] for n in nodes)
            want = {i: per_layer for i in range(n_layers)}
            if dict(counts) != want:
                raise CanonicalFormError(f"{name}: expected {per_layer} {target} per layer, got {dict(counts)}")
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return program.with_entries(graphs, stage="canonical")
