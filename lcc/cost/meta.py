"""Fake-tensor values on every node of an entry graph, propagated again where a pass left gaps.

``torch.export`` leaves ``meta["val"]`` (fake tensors with SymInt shapes) on every node;
nodes a pass inserts may lack it, or carry values from another fake mode.  Those nodes are
given values of the capture's fake mode in place (metadata only: the graph's nodes and code
stay as they are; copying a 30-layer graph to fill it cost more than pricing it); where that
fails, a copy of the graph is propagated afresh: a new ``ShapeEnv`` with the sequence dim
dynamic, the cache inputs made from the program's ``CacheLayout``, weights read as constants.
"""

from __future__ import annotations

import torch
import torch.fx

HINT = 61  # example sequence length for a fresh propagation: prime, so it equals no model dim


def _vals(gm):
    return [n.meta.get("val") for n in gm.graph.nodes if n.op in ("placeholder", "call_function")]


def consistent(gm: torch.fx.GraphModule) -> bool:
    """Every placeholder and call has a value, and all fake tensors share one fake mode."""
    modes = set()
    for n in gm.graph.nodes:
        if n.op not in ("placeholder", "call_function", "get_attr"):
            continue
        if "val" not in n.meta:
            return False
        vals = n.meta["val"] if isinstance(n.meta["val"], (list, tuple)) else [n.meta["val"]]
        for v in vals:
            mode = getattr(v, "fake_mode", None)
            if mode is not None:
                modes.add(id(mode))
    return len(modes) <= 1


def _fake_input(mode, name: str, shape, dtype, dynamic):
    from torch._dynamo.source import LocalSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext

    example = torch.empty([HINT if d else s for s, d in zip(shape, dynamic)], dtype=dtype)
    ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC if d else DimDynamic.STATIC for d in dynamic])
    return mode.from_tensor(example, source=LocalSource(name), symbolic_context=ctx)


def _mode_of(gm):
    """The fake mode most of the graph's values come from (the capture's), or None."""
    from collections import Counter

    modes = Counter()
    for v in _vals(gm):
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if getattr(x, "fake_mode", None) is not None:
                modes[x.fake_mode] += 1
    return modes.most_common(1)[0][0] if modes else None


def _resolve(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _fill(new: torch.fx.GraphModule, mode, layout) -> None:
    """Give every node lacking a value of ``mode`` one, in graph order, running only those nodes."""
    from torch.utils import _pytree as pytree

    placeholders = [n for n in new.graph.nodes if n.op == "placeholder"]
    shapes = layout.shapes()
    dtypes = layout.dtypes() if hasattr(layout, "dtypes") else [layout.dtype] * len(shapes)
    cache_ph = placeholders[len(placeholders) - len(shapes):]

    def ours(v) -> bool:
        return all(getattr(x, "fake_mode", mode) is mode for x in pytree.tree_leaves(v))

    def value(a):
        return a.meta["val"] if isinstance(a, torch.fx.Node) else a

    for n in new.graph.nodes:
        if "val" in n.meta and ours(n.meta["val"]):
            continue
        if n.op == "placeholder":
            i = cache_ph.index(n) if n in cache_ph else None
            with mode:
                n.meta["val"] = (torch.empty(shapes[i], dtype=getattr(torch, dtypes[i])) if i is not None
                                 else torch.empty((), dtype=torch.long))
        elif n.op == "get_attr":
            real = _resolve(new, n.target)
            if isinstance(real, torch.Tensor):
                n.meta["val"] = mode.from_tensor(real, static_shapes=True)
        elif n.op == "call_function":
            args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), value)
            with mode:
                n.meta["val"] = n.target(*args, **kwargs)


def with_values(gm: torch.fx.GraphModule, layout) -> torch.fx.GraphModule:
    """``gm`` with complete values: itself, its missing values filled in in place, or else a propagated copy.

    Nodes a pass added (or traced in another fake mode) are run again in the capture's fake
    mode, in graph order, so their shapes speak the same ``seq`` symbol as the rest (only
    ``meta["val"]`` of those nodes changes); if that fails, a copy is propagated afresh.
    """
    from torch._dispatch.python import enable_python_dispatcher

    if consistent(gm):
        return gm
    mode = _mode_of(gm)
    # composite ops (aten.linear) decompose in Python under the Python dispatcher, as in torch.export itself;
    # without it torch 2.11's C++ linear asks a symbolic-shaped input for numel() and raises
    with enable_python_dispatcher():
        if mode is not None:
            try:
                _fill(gm, mode, layout)
                return gm
            except Exception:  # fall back to a fresh propagation of everything
                pass
        return _propagate(gm, layout)


def _propagate(gm: torch.fx.GraphModule, layout) -> torch.fx.GraphModule:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from lcc.capture.program import copy_graph_module

    new = copy_graph_module(gm)
    mode = FakeTensorMode(shape_env=ShapeEnv(duck_shape=False), allow_non_fake_inputs=True)
    placeholders = [n for n in new.graph.nodes if n.op == "placeholder"]
    shapes, dtypes = layout.shapes(), layout.dtypes() if hasattr(layout, "dtypes") else [layout.dtype] * 999
    cache_ph = placeholders[len(placeholders) - len(shapes):]
    inputs = []
    for n in placeholders:
        old = n.meta.get("val")
        if n in cache_ph:
            i = cache_ph.index(n)
            val = _fake_input(mode, n.name, shapes[i], getattr(torch, dtypes[i]), [False] * len(shapes[i]))
        elif isinstance(old, torch.Tensor):
            dyn = [isinstance(d, torch.SymInt) for d in old.shape]
            val = _fake_input(mode, n.name, [0 if d else int(s) for s, d in zip(old.shape, dyn)], old.dtype, dyn)
        else:
            val = _fake_input(mode, n.name, [], torch.long, [])
        inputs.append(val)
    FakeTensorProp(new, mode).propagate_dont_convert_inputs(*inputs)
    return new
