"""Graph edits shared by the RoPE passes: swap each ``lcc.rope`` node's frequencies and scaling."""

from __future__ import annotations

import torch

from lcc.capture.program import Program
from lcc.passes.base import PassResult
from lcc.passes.graph import ROPE, get_arg, layer_of, lcc_nodes, set_args


def current_inv_freq(program: Program, entry: str = "prefill", layer: int | None = None) -> torch.Tensor:
    """The inverse frequencies the program's rope nodes of ``layer`` read now (the first layer's by default;
    layers differ where the model keeps RoPE per layer kind, as Gemma 3's local and global layers)."""
    gm = program.entries[entry]
    nodes = [n for n in lcc_nodes(gm, ROPE) if layer is None or layer_of(n) == layer]
    return _resolve(gm, get_arg(nodes[0], "inv_freq"))


def _resolve(gm, node) -> torch.Tensor:
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def rewrite_rope(program: Program, inv_freq: torch.Tensor, attention_scaling: float, variant: str = "",
                 layers: set[int] | None = None) -> PassResult:
    """New entry graphs whose rope nodes (of ``layers``; all by default) read ``inv_freq`` (a new buffer) with the
    given scaling and variant; the other layers' nodes keep what they read."""
    graphs = program.copy_graphs()
    changed = False
    for gm in graphs.values():
        nodes = [n for n in lcc_nodes(gm, ROPE) if layers is None or layer_of(n) in layers]
        if not nodes:
            continue
        name, n = "lcc_rope_inv_freq", 0
        while hasattr(gm, name):  # an earlier rewrite's buffer may still be read by layers this one leaves alone
            n += 1
            name = f"lcc_rope_inv_freq_{n}"
        gm.register_buffer(name, inv_freq.detach().to(torch.float32).clone(), persistent=False)
        with gm.graph.inserting_before(nodes[0]):
            new = gm.graph.get_attr(name)
        for node in nodes:
            set_args(node, inv_freq=new, attention_scaling=float(attention_scaling), variant=variant)
        changed = True
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(program.with_entries(graphs), changed)
