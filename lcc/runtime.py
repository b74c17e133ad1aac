"""Run a program: greedy generation through ``prefill`` + ``decode`` with the explicit cache."""

from __future__ import annotations

import copy
import operator
import weakref
from dataclasses import dataclass

import torch
import torch.fx

from lcc.capture.program import Program, copy_graph_module


@dataclass
class Generation:
    prompt_ids: list[int]
    new_ids: list[int]
    text: str


def eos_ids(loaded_model) -> set[int]:
    """The token ids that end generation, as transformers' generate reads them."""
    ids = set()
    for source in (getattr(loaded_model, "generation_config", None), loaded_model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is None:
            continue
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        if ids:
            break
    return ids


def device_of(program) -> torch.device:
    """The device a program's weights live on (``cpu`` for programs without parameters)."""
    meta = getattr(program, "meta", None)
    return torch.device((meta.get("device") if isinstance(meta, dict) else None) or "cpu")


def to_device(program: Program, device: str) -> Program:
    """The program with its weights on ``device`` and every device constant in its graphs rewritten.

    torch.export records ``device=cpu`` on the tensors a graph creates (``arange``, ``zeros``,
    ``full``...); those are rewritten so the whole program runs on ``device``.  On CUDA, importing
    :mod:`lcc.backends.triton` installs the Triton kernels as the ops' CUDA implementations.
    The new program's graphs own their weights: ``program`` itself stays where it was.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from lcc.errors import UsageError

            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        import lcc.backends.triton  # noqa: F401  (Triton kernels as the ops' CUDA implementations)
    entries = {}
    for name, gm in program.entries.items():
        new = copy.deepcopy(gm)
        for node in new.graph.nodes:
            node.args = _retarget(node.args, dev)
            node.kwargs = _retarget(node.kwargs, dev)
        new.recompile()
        entries[name] = new.to(dev)
    return program.with_entries(entries, meta={**program.meta, "device": str(dev)})


def _retarget(value, dev: torch.device):
    if isinstance(value, torch.device):
        return dev
    if isinstance(value, tuple):
        return tuple(_retarget(v, dev) for v in value)
    if isinstance(value, list):
        return [_retarget(v, dev) for v in value]
    if isinstance(value, dict):
        return {k: _retarget(v, dev) for k, v in value.items()}
    return value


def write_cache_in_place(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the entry graph ``gm`` whose cache writes update the cache inputs in place and return them.

    Captured entries write each layer's cache functionally (``index_copy`` for a decode step,
    ``slice_scatter`` for a prefill), which copies the whole capacity-sized tensor per layer and
    step. Where a cache input's only use is such a write, it becomes ``index_copy_`` / a ``copy_``
    into a ``slice`` of that input, so a step moves only the new keys and values. Valid only for a
    caller that owns the cache it passes and never reuses the old tensors, as the runtime does;
    the entry-point contract (``decode(input_ids, position, *cache) -> (logits, *cache)``) holds.
    ``gm`` is not modified; the copy shares its weights.
    """
    new = copy_graph_module(gm)
    _write_in_place(new.graph)
    new.recompile()
    return new


def _write_in_place(graph: torch.fx.Graph) -> None:
    for x in [n for n in graph.nodes if n.op == "placeholder"]:
        if len(x.users) != 1:
            continue
        (write,) = x.users
        if write.op != "call_function" or not write.args or write.args[0] is not x:
            continue
        if write.target is torch.ops.aten.index_copy.default:
            write.target = torch.ops.aten.index_copy_.default
        elif write.target is torch.ops.aten.slice_scatter.default:
            src, dim, start, end, step = _slice_scatter_args(write)
            with graph.inserting_before(write):
                view = graph.call_function(torch.ops.aten.slice.Tensor, (x, dim, start, end, step))
                graph.call_function(torch.ops.aten.copy_.default, (view, src))
            write.replace_all_uses_with(x)
            graph.erase_node(write)


def _slice_scatter_args(node: torch.fx.Node):
    """(src, dim, start, end, step) of an ``aten.slice_scatter`` node, defaults filled in."""
    names = ("self", "src", "dim", "start", "end", "step")
    given = {**dict(zip(names, node.args)), **node.kwargs}
    return given["src"], given.get("dim", 0), given.get("start"), given.get("end"), given.get("step", 1)


def _call_ops_directly(graph: torch.fx.Graph) -> None:
    """Call ``graph``'s custom ops as their Python bodies and drop torch.export's metadata assertions, for a
    graph that runs on the CPU.

    Through the dispatcher each custom-op call is wrapped in ``torch._dynamo.disable``: the first call
    imports torch._dynamo (a second or more of a command's start) and every call pays for the wrapper;
    the op's body (:func:`lcc.ops.registry.cpu_body`) is the same computation.  An op with a CPU kernel
    of its own keeps its dispatch.  ``aten._assert_tensor_metadata`` nodes check that the tensors the
    graph converts have the dtype and device they had at capture: the runtime passes exactly those
    (its own cache and token ids), so they only cost a call each per step.
    """
    from lcc.ops.registry import cpu_body

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            graph.erase_node(node)
        elif isinstance(node.target, torch._ops.OpOverload):
            body = cpu_body(node.target)
            if body is not None:
                node.target = body


_OWNED: "weakref.WeakKeyDictionary[torch.fx.GraphModule, torch.fx.GraphModule]" = weakref.WeakKeyDictionary()


def owned_entry(entry, device="cpu"):
    """The entry the runtime calls for ``entry`` (made once per graph and kept while ``entry`` lives): for an
    FX graph, its copy that writes the cache in place (:func:`write_cache_in_place`) and, on the CPU, calls
    the ops directly (:func:`_call_ops_directly`); any other callable as it is."""
    if not isinstance(entry, torch.fx.GraphModule):
        return entry
    owned = _OWNED.get(entry)
    if owned is None:
        graph = copy.deepcopy(entry.graph)
        _write_in_place(graph)
        if torch.device(device).type == "cpu":
            _call_ops_directly(graph)
        # one GraphModule, generating its code once (copy_graph_module + recompile generated it twice: a
        # third of a second per entry), its weights as flat attributes: ``self.model.layers[0]...weight``
        # would be six nn.Module.__getattr__ calls per weight and step
        attrs = {}
        for node in graph.nodes:
            if node.op == "get_attr":
                value = operator.attrgetter(node.target)(entry)
                node.target = f"w{len(attrs)}_{node.target.replace('.', '_')}"
                attrs[node.target] = value
            elif node.op == "call_module":  # torch.export's _guards_fn of a captured program
                attrs[node.target] = operator.attrgetter(node.target)(entry)
        owned = torch.fx.GraphModule(attrs, graph, class_name=type(entry).__name__)
        for attr in ("_in_spec", "_out_spec"):  # as copy_graph_module keeps them
            if hasattr(entry, attr):
                setattr(owned, attr, getattr(entry, attr))
        owned.meta.update(getattr(entry, "meta", {}))
        _OWNED[entry] = owned
    return owned


def empty_cache(layout, device) -> list[torch.Tensor]:
    """``layout.empty(device)``, on the CPU allocated as untouched zero pages (calloc), so the memory a
    cache holds grows with the positions written rather than with its capacity."""
    if torch.device(device).type != "cpu":
        return layout.empty(device)
    import numpy as np

    out = []
    for shape, dtype in zip(layout.shapes(), layout.dtypes()):
        dt = getattr(torch, dtype)
        try:
            out.append(torch.from_numpy(np.zeros(shape, dtype=torch.empty(0, dtype=dt).numpy().dtype)))
        except TypeError:  # a dtype numpy lacks (bfloat16...)
            out.append(torch.zeros(shape, dtype=dt))
    return out


@torch.inference_mode()
def generate_ids(program: Program, prompt_ids: torch.Tensor, max_new_tokens: int,
                 stop: set[int] = frozenset(), cache_layout=None) -> list[int]:
    """Greedy decoding: one prefill of the prompt, then one decode call per new token.

    ``program`` is anything with ``entries`` (a Program or a loaded artifact); ``cache_layout``
    defaults to ``program.cache``.
    """
    dev = device_of(program)
    prefill, decode = owned_entry(program.entries["prefill"], dev), owned_entry(program.entries["decode"], dev)
    layout = cache_layout or program.cache
    n = prompt_ids.shape[1]
    ring = layout.ring is not None  # StreamingLLM's cache: constant size, no end
    if n > layout.capacity or (n + max_new_tokens > layout.capacity and not ring):
        from lcc.errors import UsageError

        raise UsageError(f"prompt ({n} tokens) + new tokens ({max_new_tokens}) exceed the cache capacity "
                         f"{layout.capacity}: compile with a larger --target-len or ask for fewer tokens")
    if n == 1:  # prefill is captured for S >= 2; one token is a decode step at position 0 on an empty cache
        logits, *cache = decode(prompt_ids.to(dev), torch.tensor(0, device=dev), *empty_cache(layout, dev))
    else:
        logits, *cache = prefill(prompt_ids.to(dev), *empty_cache(layout, dev))
    out: list[int] = []
    token = logits[:, -1].argmax(-1)
    for step in range(max_new_tokens):
        out.append(int(token[0]))
        if out[-1] in stop or step == max_new_tokens - 1:
            break
        logits, *cache = decode(token.view(1, 1), torch.tensor(n + step, device=dev), *cache)
        token = torch.as_tensor(logits)[:, -1].argmax(-1)
    return out
