"""``rewrite_attention``: the graph surgery shared by the attention passes (mask and algorithm changes).

Each selected layer's ``lcc.attention`` nodes get new arguments computed from their old ones;
the input program is never mutated. Used by :mod:`lcc.passes.attention` and
:mod:`lcc.passes.sparse`, which therefore need not import each other.
"""

from __future__ import annotations

from typing import Any, Callable

from lcc.capture.program import Program
from lcc.passes.base import PassResult
from lcc.passes.graph import ATTENTION, get_arg, layer_of, lcc_nodes, parse_layers, set_args


def rewrite_attention(program: Program, layers: str, **changes: Callable[[Any], Any]) -> PassResult:
    """Set each argument named in ``changes`` to ``changes[name](old value)`` on the chosen layers' attention."""
    graphs = program.copy_graphs()
    chosen = parse_layers(layers, program.spec.layers)
    changed = False
    for gm in graphs.values():
        for node in lcc_nodes(gm, ATTENTION):
            if layer_of(node) not in chosen:
                continue
            updates = {k: f(get_arg(node, k)) for k, f in changes.items()}
            if any(get_arg(node, k) != v for k, v in updates.items()):
                set_args(node, **updates)
                changed = True
        gm.recompile()
    return PassResult(program.with_entries(graphs), changed)
