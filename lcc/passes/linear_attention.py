"""``linear-attention``: softmax attention replaced by causal kernelized attention.

Each selected ``lcc.attention`` node becomes ``lcc.linear_attention`` with the same q, k, v and
``kv_len``: prefill runs the causal linear form, decode reads the plain K/V cache and computes
phi(q) . sum_{j<kv_len} phi(k_j) v_j^T / phi(q) . sum_{j<kv_len} phi(k_j), O(kv_len) per step, so
the cache layout is unchanged.  Feature maps: elu+1 (Katharopoulos et al. 2020) on the raw q, k;
Performer FAVOR+ (Choromanski et al. 2021), whose kernel exp(q.k / sqrt(D)) is matched to the
layer's own softmax scale by rescaling q.  The projection is drawn from ``seed`` when the op
runs, so the program holds only the spec string and the same seed gives the same program.

This changes the function of a model trained with softmax attention: it is an approximation,
not a drop-in replacement (without fine-tuning the output degrades heavily).
"""

from __future__ import annotations

import math
import operator

import torch

from lcc.capture.program import Program
from lcc.passes.base import Param, PassResult, register
from lcc.passes.graph import ATTENTION, get_arg, layer_of, lcc_nodes, parse_layers, refuse_softcap

LINEAR = torch.ops.lcc.linear_attention.default


def feature_map_spec(feature_map: str, features: int, seed: int) -> str:
    if feature_map == "elu":
        return "elu"
    return f"performer:features={features},seed={seed}"


def _replace(gm: torch.fx.GraphModule, attn: torch.fx.Node, fmap: str, head_dim: int) -> None:
    refuse_softcap("linear-attention", attn)
    q, k, v = (get_arg(attn, n) for n in ("q", "k", "v"))
    scale, kv_len = get_arg(attn, "scale"), get_arg(attn, "kv_len")
    if "val" in q.meta:
        head_dim = q.meta["val"].shape[-1]
    with gm.graph.inserting_before(attn):
        factor = scale * math.sqrt(head_dim)  # FAVOR+ approximates exp(q.k / sqrt(D)): fold the layer's scale in q
        if fmap != "elu" and abs(factor - 1.0) > 1e-12:
            q = gm.graph.call_function(operator.mul, (q, factor))
        new = gm.graph.call_function(LINEAR, (q, k, v, fmap, None, 1e-6, "auto", kv_len))
    new.meta.update({key: val for key, val in attn.meta.items() if key != "val"})
    new.meta["lcc_layer"] = layer_of(attn)
    attn.replace_all_uses_with(new)
    gm.graph.erase_node(attn)


@register("linear-attention",
          params=(Param("feature_map", str, "elu", "elu (elu+1) or performer (FAVOR+)", choices=("elu", "performer")),
                  Param("features", int, 256, "performer: random features M", low=1, high=1 << 16),
                  Param("seed", int, 0, "performer: seed of the orthogonal random features", low=0, high=2**63 - 1),
                  Param("layers", str, "all", "layers to rewrite: all or e.g. 0-5,12")),
          exact=False, slots=("attention",),
          composes=("linear-attention", "flash", "attention-chunked", "sliding-window", "block-sparse"),
          doc="causal linear attention (elu+1 or Performer FAVOR+); APPROXIMATE: changes a softmax-trained "
              "model's function, not a drop-in replacement")
def linear_attention(program: Program, feature_map: str = "elu", features: int = 256, seed: int = 0,
                     layers: str = "all") -> PassResult:
    fmap = feature_map_spec(feature_map, features, seed)
    chosen = parse_layers(layers, program.spec.layers)
    graphs = program.copy_graphs()
    changed = False
    for gm in graphs.values():
        for attn in lcc_nodes(gm, ATTENTION):
            if layer_of(attn) in chosen:
                _replace(gm, attn, fmap, program.spec.head_dim)
                changed = True
        gm.graph.lint()
        gm.recompile()
    return PassResult(program.with_entries(graphs), changed)
