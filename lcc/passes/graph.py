"""Graph helpers only passes need (the layer-list parameter); the shared node readers live in :mod:`lcc.graph`.

The names below are re-exported from :mod:`lcc.graph` so that passes and their tests read
``from lcc.passes.graph import ...`` as before; backends and the cost model import
:mod:`lcc.graph` directly, never a pass module.
"""

from __future__ import annotations

from lcc.errors import UsageError
from lcc.graph import ATTENTION, ROPE, full_args, get_arg, layer_of, lcc_nodes, named_args, set_args

__all__ = ["ATTENTION", "ROPE", "full_args", "get_arg", "layer_of", "lcc_nodes", "named_args", "parse_layers",
           "refuse_softcap", "set_args"]


def refuse_softcap(pass_name: str, attn) -> None:
    """A pass that replaces ``lcc.attention`` by an op without soft-capping (Gemma 2's ``tanh(s / c) * c``) refuses
    a soft-capped layer in one line rather than dropping the cap silently."""
    cap = get_arg(attn, "softcap")
    if cap:
        layer = layer_of(attn)
        raise UsageError(f"{pass_name}: layer {layer if layer is not None else '?'} soft-caps its attention scores "
                         f"(softcap={cap:g}) and {pass_name}'s attention has no soft-cap; leave {pass_name} out for "
                         "this model")


def parse_layers(text: str, n_layers: int) -> set[int]:
    """``all`` or ``0-5,12`` -> a set of layer indices (checked against the model)."""
    if text in ("", "all"):
        return set(range(n_layers))
    out: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise UsageError(f"bad layer list {text!r}: use e.g. layers=0-5,12 or layers=all")
        if last < first:
            raise UsageError(f"bad layer range {part!r} in {text!r}: write it low-high, e.g. layers={last}-{first}")
        for i in range(first, last + 1):
            if not 0 <= i < n_layers:
                raise UsageError(f"layer {i} in {text!r} is out of range: the model has layers 0-{n_layers - 1}")
            out.add(i)
    return out
