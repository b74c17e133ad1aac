"""Canonicalization: check and normalise the lcc ops capture produced.

After capture, each attention of each layer must be exactly one ``lcc.attention``
node and each rotary application one ``lcc.rope`` node.  This step verifies that,
records each node's layer, writes every op's arguments out in full (so passes edit
them by name) and removes dead code.  Later stages rely on this form only.
"""

from __future__ import annotations

from collections import Counter

from lcc.capture.program import Program
from lcc.errors import UsageError
from lcc.passes.graph import ATTENTION, ROPE, full_args, layer_of, lcc_nodes


class CanonicalFormError(UsageError):
    """The captured program is not in canonical form: the model is refused (one line, what was not recognised)."""


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
            wrong = [i for i in sorted(set(range(n_layers)) | set(counts)) if counts.get(i, 0) != per_layer]
            if wrong:
                what = "attention" if target == ATTENTION else "rotary embedding"
                raise CanonicalFormError(
                    f"{name}: layer {wrong[0]}: {what} not recognised ({counts.get(wrong[0], 0)} {target} where "
                    f"canonical form has {per_layer}): this model is not supported")
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return program.with_entries(graphs, stage="canonical")
