"""``rerope`` and ``leaky-rerope`` (Su 2023): relative positions past a window are clamped or slowed.

Per layer, the two ``lcc.rope`` nodes and the ``lcc.attention`` node become one
``lcc.rerope_attention`` node that takes the un-rotated q and k; the KV cache then
holds un-rotated keys, since a key's rotation depends on the query it meets.
"""

from __future__ import annotations

import torch

from lcc.capture.program import Program
from lcc.errors import UsageError
from lcc.passes.base import MAX_TOKENS, Param, PassResult, register
from lcc.passes.graph import ATTENTION, ROPE, get_arg, layer_of, lcc_nodes

RERoPE = torch.ops.lcc.rerope_attention.default


def _rewrite(program: Program, window: int, leaky_factor: float) -> PassResult:
    graphs = program.copy_graphs()
    for name, gm in graphs.items():
        ropes: dict[int, list] = {}
        for node in lcc_nodes(gm, ROPE):
            ropes.setdefault(layer_of(node), []).append(node)
        for attn in lcc_nodes(gm, ATTENTION):
            layer = layer_of(attn)
            q_rope = get_arg(attn, "q")
            pair = ropes.get(layer, [])
            if q_rope not in pair or len(pair) != 2 or get_arg(q_rope, "variant"):
                raise UsageError(f"rerope: layer {layer} of {name} is not plain rope + attention "
                                 "(apply rerope before other rope or attention-changing passes)")
            k_rope = pair[1] if pair[0] is q_rope else pair[0]
            k_rope.replace_all_uses_with(get_arg(k_rope, "x"))  # the cache keeps un-rotated keys
            args = dict(q=get_arg(q_rope, "x"), k=get_arg(attn, "k"), v=get_arg(attn, "v"),
                        positions=get_arg(q_rope, "positions"), inv_freq=get_arg(q_rope, "inv_freq"),
                        attention_scaling=get_arg(q_rope, "attention_scaling"), kv_len=get_arg(attn, "kv_len"),
                        scale=get_arg(attn, "scale"), window=int(window), leaky_factor=float(leaky_factor),
                        mask=get_arg(attn, "mask"))
            with gm.graph.inserting_after(attn):
                new = gm.graph.call_function(RERoPE, tuple(args.values()))
            new.meta.update({k: v for k, v in attn.meta.items() if k != "val"})
            new.meta["lcc_layer"] = layer
            attn.replace_all_uses_with(new)
            gm.graph.erase_node(attn)
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return PassResult(program.with_entries(graphs), True)


def _exact_if(args: dict, length: int) -> bool:
    return args["window"] >= length


_WINDOW = Param("window", int, 512, "relative positions below this stay exact RoPE", low=1, high=MAX_TOKENS)
# the fused op replaces rope + attention: a mask set before it is kept, an algo or a later rope change is not
_COMPOSE = dict(slots=("positions", "attention"), composes=("sliding-window", "block-sparse"), plan_with=())


def _plan_window(target_len: int, trained_len: int) -> list[str]:
    """Past the trained length: window = trained / 4 (docs/rope.md's 2048 for an 8k model); none within it."""
    return [f"window={trained_len // 4}"] if target_len > trained_len else []


@register("rerope", params=(_WINDOW,), exact=False, exact_if=_exact_if, plan=_plan_window, **_COMPOSE,
          doc="ReRoPE: relative positions past the window clamp to it (fused kernel on GPU)")
def rerope(program: Program, window: int = 512) -> PassResult:
    return _rewrite(program, window, 0.0)


@register("leaky-rerope", params=(_WINDOW, Param("factor", float, 16.0, "k: positions past the window advance 1/k",
                                                  low=1.0, high=1e6)),
          exact=False, exact_if=_exact_if, plan=_plan_window, **_COMPOSE,
          doc="Leaky ReRoPE: relative positions past the window grow with slope 1/k")
def leaky_rerope(program: Program, window: int = 512, factor: float = 16.0) -> PassResult:
    return _rewrite(program, window, 1.0 / factor)
