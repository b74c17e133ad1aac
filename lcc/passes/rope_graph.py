"""Graph edits shared by the RoPE passes: swap each ``lcc.rope`` node's frequencies and scaling."""

from __future__ import annotations

import torch

from lcc.capture.program import Program
from lcc.passes.base import PassResult
from lcc.passes.graph import ROPE, get_arg, lcc_nodes, set_args


def current_inv_freq(program: Program, entry: str = "prefill") -> torch.Tensor:
    """The inverse frequencies the program's rope nodes read now (all layers share them)."""
    gm = program.entries[entry]
    node = get_arg(lcc_nodes(gm, ROPE)[0], "inv_freq")
    return _resolve(gm, node)


def _resolve(gm, node) -> torch.Tensor:
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def rewrite_rope(program: Program, inv_freq: torch.Tensor, attention_scaling: float, variant: str = "") -> PassResult:
    """New entry graphs whose rope nodes read ``inv_freq`` (a new buffer) with the given scaling and variant."""
    graphs = program.copy_graphs()
    changed = False
    for gm in graphs.values():
        nodes = lcc_nodes(gm, ROPE)
        if not nodes:
            continue
        gm.register_buffer("lcc_rope_inv_freq", inv_freq.detach().to(torch.float32).clone(), persistent=False)
        with gm.graph.inserting_before(nodes[0]):
            new = gm.graph.get_attr("lcc_rope_inv_freq")
        for node in nodes:
            set_args(node, inv_freq=new, attention_scaling=float(attention_scaling), variant=variant)
        changed = True
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(program.with_entries(graphs), changed)
