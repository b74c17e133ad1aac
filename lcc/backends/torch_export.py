"""The ``torch`` backend: each entry's exported graph as JSON, the weights once in safetensors, run by PyTorch.

lcc ops run through their registered implementations (CPU reference paths, or
kernels a GPU backend registered), so this backend is the baseline every other
one is compared with.

Format (no pickle anywhere): ``<entry>.json`` is ``torch.export``'s own JSON
serialisation of the entry's exported program (``torch._export.serde``) and
``weights.safetensors`` holds every parameter, buffer and tensor constant of all
entries, each tensor once (tied and shared tensors are aliases in its metadata).
No example inputs and no cache tensors are stored. ``torch.export.save`` is not
used: its archive keeps example inputs (a zero cache of the full capacity) and its
loader falls back to an unrestricted unpickle. The JSON is checked first
(:mod:`lcc.backends.safe_graph`), then read into an FX graph by :func:`graph_from_json`
rather than torch's deserializer, which resolves node targets by name, evaluates shape
expressions (sympy) and takes seconds per entry; the reader builds only the nodes, so an
artifact loads in about the time it takes to map its weights.
"""

from __future__ import annotations

import contextlib
import json
import keyword
import math
import operator
from pathlib import Path

import torch
import torch.fx
from lcc.backends import Lowered, check_dtype, check_program_dtype
from lcc.backends.safe_graph import PLAIN_TARGETS, load_graph_json
from lcc.errors import UsageError
from lcc.target import parse_target

WEIGHTS = "weights.safetensors"
ENTRIES = ("prefill", "decode")


def export_entry(program, name: str, gm: torch.fx.GraphModule | None = None, seq_len: int | None = None):
    """Re-export one entry graph (``gm``, default the program's own): the sequence length of prefill-like
    entries dynamic, or fixed at ``seq_len``."""
    gm = program.entries[name] if gm is None else gm
    shapes = program.dynamic_shapes(name) if seq_len is None else None
    with torch.no_grad():
        return torch.export.export(gm, _example_inputs(program, name, seq_len), dynamic_shapes=shapes, strict=False)


def exported_program(program, name: str):
    """(entry ``name`` of ``program`` as an exported program, None), its graph lifted (weights read by ``get_attr``
    become inputs, as ``torch.export`` makes them) when it still carries the values and range constraints of its
    capture (:data:`lcc.capture.export.RANGES`); else (:func:`export_entry`'s, why it was exported again).

    The lifted graph runs the same nodes as the program (exporting it again traced each once more: two thirds of a
    lowering's time), ``torch.export``'s verifier checks it as it checks an export, and the compile's lowered check
    compares the artifact with the program either way."""
    try:
        return _lifted(program, name), None
    except Exception as e:  # noqa: BLE001  (any graph the lifting cannot take is exported again, and noted)
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return export_entry(program, name), why


def _lifted(program, name: str):
    """:func:`exported_program`'s lifting; a ``ValueError`` when the graph lacks its capture's ranges or values."""
    import torch.utils._pytree as pytree
    from torch.export import ExportedProgram
    from torch.export.exported_program import ModuleCallEntry, ModuleCallSignature
    from torch.export.graph_signature import (ExportGraphSignature, InputKind, InputSpec, OutputKind, OutputSpec,
                                              TensorArgument)

    from lcc.capture.export import RANGES
    from lcc.capture.program import copy_graph_module
    from lcc.cost.meta import with_values

    source = program.entries[name]
    if RANGES not in source.meta:
        raise ValueError("its graph does not carry its capture's range constraints")
    gm = copy_graph_module(source)
    if with_values(gm, program.cache) is not gm:
        raise ValueError("its values were propagated afresh, in shape symbols of their own")
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_module"]:  # ExportedProgram.module()'s input guards
        if node.users:
            raise ValueError(f"it calls submodule {node.target}")
        graph.erase_node(node)
    user_inputs = [n for n in graph.nodes if n.op == "placeholder"]
    specs, state, constants, placeholders = [], {}, {}, {}
    prefix = {InputKind.PARAMETER: "p_", InputKind.BUFFER: "b_", InputKind.CONSTANT_TENSOR: "c_"}
    for node, kind, value, persistent in _graph_attrs(gm):  # torch.export's order: parameters, buffers, constants
        if node.target not in placeholders:
            with graph.inserting_before(user_inputs[0]):
                ph = placeholders[node.target] = graph.placeholder(prefix[kind] + node.target.replace(".", "_"))
            ph.meta = dict(node.meta)
            specs.append(InputSpec(kind, TensorArgument(ph.name), node.target, persistent))
            (state if kind == InputKind.PARAMETER or persistent else constants)[node.target] = value
        node.replace_all_uses_with(placeholders[node.target])
        graph.erase_node(node)
    specs += [InputSpec(InputKind.USER_INPUT, TensorArgument(n.name), None) for n in user_inputs]
    output = next(n for n in graph.nodes if n.op == "output")
    outs = pytree.tree_leaves(output.args[0])
    output.args = (tuple(outs),)
    out_specs = [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(n.name), None) for n in outs]
    call = ModuleCallSignature(inputs=[], outputs=[], in_spec=pytree.tree_flatten((tuple(user_inputs), {}))[1],
                               out_spec=pytree.tree_flatten(tuple(outs))[1])
    return ExportedProgram(gm, graph, ExportGraphSignature(specs, out_specs), state, source.meta[RANGES],
                           [ModuleCallEntry("", call)], None, constants)


def _graph_attrs(gm) -> list:
    """[(get_attr node, InputKind, tensor, persistent)] of ``gm``: parameters, then buffers (persistent or not),
    then other tensor constants."""
    from torch.export.graph_signature import InputKind

    found = []
    for node in [n for n in gm.graph.nodes if n.op == "get_attr"]:
        owner_name, _, leaf = node.target.rpartition(".")
        owner = _attr(gm, owner_name) if owner_name else gm
        value = getattr(owner, leaf)
        if isinstance(value, torch.nn.Parameter):
            found.append((node, InputKind.PARAMETER, value, None))
        elif leaf in owner._buffers:
            found.append((node, InputKind.BUFFER, value, leaf not in owner._non_persistent_buffers_set))
        else:
            found.append((node, InputKind.CONSTANT_TENSOR, value, None))
    order = [InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR]
    return sorted(found, key=lambda f: order.index(f[1]))


def _attr(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _example_inputs(program, name: str, seq_len: int | None):
    """``Program.example_inputs`` with the cache left uninitialised: export reads only its shapes and dtypes,
    and zero-filling a long context's cache (1.5 GB per entry for smollm2-135m at 32k) took seconds."""
    cache = [torch.empty(s, dtype=getattr(torch, d)) for s, d in zip(program.cache.shapes(), program.cache.dtypes())]
    batch = program.cache.batch
    if name == "decode":
        return (torch.zeros(batch, 1, dtype=torch.long), torch.tensor(0), *cache)
    return (torch.zeros(batch, seq_len or min(8, program.cache.capacity), dtype=torch.long), *cache)


@contextlib.contextmanager
def _no_canonical_form_test():
    """Within it, torch's serializer skips its test that the program has a canonical form: it canonicalizes a
    deep copy of the serialized program and drops the result (``ExportedProgramSerializer.serialize``: "Test
    canonical form is well defined"), so the JSON is the same; the copy took two thirds of serialising a
    30-layer entry."""
    from torch._export.serde import serialize

    saved = getattr(serialize, "canonicalize", None)
    if saved is None:  # a torch whose serializer has no such test: nothing to skip
        yield
        return
    serialize.canonicalize = lambda ep, constants=None: ep
    try:
        yield
    finally:
        serialize.canonicalize = saved


def serialize_json(ep) -> bytes:
    """torch's JSON of the exported program ``ep`` (``torch._export.serde``), without its state dict, constants
    and example inputs (a zero cache of the full capacity): they are not serialised at all."""
    from torch._export.serde.serialize import serialize

    with _no_canonical_form_test():
        try:
            return serialize(ep, serialize_state_dict=False, serialize_constants=False,
                             serialize_example_inputs=False).exported_program
        except TypeError:  # a torch before these flags (the JSON is the same)
            return serialize(ep).exported_program


def _storage_key(t: torch.Tensor):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


class WeightWriter:
    """Collects named tensors of several exported programs and stores each distinct tensor once."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, str] = {}  # name -> the stored name holding the same tensor
        self.parameters: set[str] = set()  # names the programs hold as nn.Parameter (the rest are buffers)
        self._by_storage: dict[tuple, str] = {}

    def add(self, name: str, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor):
            raise RuntimeError(f"{name} is a {type(t).__name__}: the torch backend stores tensors only")
        if isinstance(t, torch.nn.Parameter):
            self.parameters.add(name)
        t = t.detach()
        key = _storage_key(t)
        if name in self.tensors or name in self.aliases:
            stored = self.aliases.get(name, name)
            if self._by_storage.get(key) != stored and not torch.equal(self.tensors[stored], t):
                raise RuntimeError(f"two entries hold different tensors named {name}")
            return
        if key in self._by_storage:
            self.aliases[name] = self._by_storage[key]
            return
        self._by_storage[key] = name
        self.tensors[name] = t.contiguous()

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        import os

        save_file(self.tensors, str(path), metadata={"lcc.aliases": json.dumps(self.aliases, sort_keys=True),
                                                     "lcc.parameters": json.dumps(sorted(self.parameters))})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; an artifact is meant to be shared


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every stored tensor and its aliases (safetensors: no code can run while reading it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            meta = f.metadata() or {}
            aliases = json.loads(meta.get("lcc.aliases", "{}"))
            parameters = json.loads(meta.get("lcc.parameters", "[]"))
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable safetensors file ({e}): recompile the artifact")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) and v in tensors for v in aliases.values()):
        raise UsageError(f"{path}: its alias table names tensors it does not hold; recompile the artifact")
    # one Parameter per stored tensor, so aliases (tied weights) and both entries share it
    params = {name: torch.nn.Parameter(t, requires_grad=False) for name, t in tensors.items()
              if name in parameters or any(a in parameters for a, target in aliases.items() if target == name)}
    tensors = {**tensors, **params}
    return {**tensors, **{name: tensors[target] for name, target in aliases.items()}}


def _constant_name(entry: str, name: str) -> str:
    return f"{entry}::{name}"


# -- reading an entry's JSON (torch._export.serde's schema) into an FX graph --------------------------------

_PLAIN_MODULES = {"_operator": operator, "torch": torch, "math": math}


def _resolve(target: str):
    """The callable a checked node target names: an op of an allowed namespace or a plain function."""
    if target in PLAIN_TARGETS:
        module, _, name = target.rpartition(".")
        return getattr(_PLAIN_MODULES[module], name)
    _, _, namespace, op, overload = target.split(".")  # torch.ops.<ns>.<op>.<overload>, as checked
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


# torch._export.serde.schema's enums by member name: torch's own maps live in serde.serialize, whose import
# pulls in torch._dynamo (seconds); tests check this table against them
_DTYPES = {"BYTE": torch.uint8, "CHAR": torch.int8, "SHORT": torch.int16, "INT": torch.int32, "LONG": torch.int64,
           "HALF": torch.float16, "FLOAT": torch.float32, "DOUBLE": torch.float64, "COMPLEXFLOAT": torch.complex64,
           "COMPLEXDOUBLE": torch.complex128, "BOOL": torch.bool, "BFLOAT16": torch.bfloat16}
_LAYOUTS = {"Strided": torch.strided}
_MEMORY_FORMATS = {"ContiguousFormat": torch.contiguous_format, "ChannelsLast": torch.channels_last,
                   "ChannelsLast3d": torch.channels_last_3d, "PreserveFormat": torch.preserve_format}


def serialized_enums() -> dict[str, dict[int, object]]:
    """Argument kind -> {serialized enum value -> torch value} for the enums an entry's JSON holds."""
    from torch._export.serde.schema import Layout, MemoryFormat, ScalarType

    return {"as_scalar_type": {ScalarType[k].value: v for k, v in _DTYPES.items()},
            "as_layout": {Layout[k].value: v for k, v in _LAYOUTS.items()},
            "as_memory_format": {MemoryFormat[k].value: v for k, v in _MEMORY_FORMATS.items()}}


class _GraphReader:
    """Builds one FX graph from the nodes of a serialized exported program."""

    def __init__(self):
        self.graph = torch.fx.Graph()
        self.env: dict[str, object] = {}  # serialized value name -> fx node (or constant)
        self.enums = serialized_enums()

    def value(self, arg: dict):
        """The Python / fx value of one serialized ``Argument`` ({kind: body})."""
        (kind, body), = arg.items()
        if kind == "as_none":
            return None
        if kind == "as_tensor":
            return self.env[body["name"]]
        if kind == "as_tensors":
            return [self.env[t["name"]] for t in body]
        if kind == "as_optional_tensors":  # each {"as_tensor": ...} or {"as_none": ...}
            return [self.value(a) for a in body]
        if kind in ("as_sym_int", "as_sym_bool", "as_sym_float"):
            (sub, v), = body.items()
            return self.env[v] if sub == "as_name" else v
        if kind in ("as_sym_ints", "as_sym_bools", "as_sym_floats"):
            return [self.value({kind[:-1]: a}) for a in body]
        if kind in self.enums:
            return self.enums[kind][body]
        if kind == "as_device":
            return torch.device(body["type"], body.get("index"))
        if kind in ("as_int", "as_bool", "as_string", "as_ints", "as_bools", "as_strings"):
            return body
        if kind == "as_float":
            return float(body)
        if kind == "as_floats":
            return [float(x) for x in body]
        raise ValueError(f"argument kind {kind} is not one lcc writes")

    def call_args(self, target, inputs: list[dict]):
        """(args, kwargs) of a node: an op's by its schema, as torch's deserializer orders them."""
        given = {i["name"]: (self.value(i["arg"]), i.get("kind", 0)) for i in inputs}
        if not isinstance(target, torch._ops.OpOverload):
            return tuple(v for v, _ in given.values()), {}
        args, kwargs = [], {}
        for a in target._schema.arguments:
            if a.name not in given:
                continue
            v, kind = given[a.name]
            positional = kind == 1 or (kind != 2 and not a.kwarg_only and not a.has_default_value())
            if positional or keyword.iskeyword(a.name):
                args.append(v)
            else:
                kwargs[a.name] = v
        return tuple(args), kwargs

    def bind(self, node, out: dict) -> None:
        (kind, body), = out.items()
        if kind == "as_tensor":
            self.env[body["name"]] = node
        elif kind in ("as_sym_int", "as_sym_bool", "as_sym_float"):
            self.env[body["as_name"]] = node
        elif kind == "as_tensors":
            for j, t in enumerate(body):
                self.env[t["name"]] = self.graph.call_function(operator.getitem, (node, j))
        elif kind != "as_none":
            raise ValueError(f"output kind {kind} is not one lcc writes")

    def node(self, n: dict) -> None:
        target = _resolve(n["target"])
        args, kwargs = self.call_args(target, n["inputs"])
        node = self.graph.call_function(target, args, kwargs)
        outs = n["outputs"]
        returns = len(target._schema.returns) if isinstance(target, torch._ops.OpOverload) else 1
        if returns == 1 and len(outs) == 1:
            self.bind(node, outs[0])
        else:
            for i, out in enumerate(outs):
                self.bind(self.graph.call_function(operator.getitem, (node, i)), out)


def graph_from_json(tree: dict, tensors: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]):
    """The runnable GraphModule of one entry's exported-program JSON (checked by ``load_graph_json``).

    It takes the user inputs positionally and returns the user outputs as a tuple, like
    ``ExportedProgram.module()``; parameters, buffers and constants are attributes bound to
    ``tensors`` (the mapped weights, not copied) and ``constants``.
    """
    gm_json = tree["graph_module"]
    graph_json, signature = gm_json["graph"], gm_json["signature"]
    reader, attrs = _GraphReader(), {}
    for spec in signature["input_specs"]:
        (kind, body), = spec.items()
        if kind == "user_input":
            (_, arg), = body["arg"].items()
            reader.env[arg["name"]] = reader.graph.placeholder(arg["name"])
            continue
        source = {"parameter": ("parameter_name", tensors), "buffer": ("buffer_name", tensors),
                  "tensor_constant": ("tensor_constant_name", constants)}.get(kind)
        if source is None:
            raise ValueError(f"input kind {kind} is not one lcc writes")
        fqn = body[source[0]]
        # a non-persistent buffer (a pass's rope inverse frequencies) is kept with the constants, not the state dict
        attrs[fqn] = source[1][fqn] if fqn in source[1] or kind != "buffer" else constants[fqn]
        reader.env[body["arg"]["name"]] = reader.graph.get_attr(fqn)
    for n in graph_json["nodes"]:
        reader.node(n)
    kinds = {k for spec in signature["output_specs"] for k in spec}
    if kinds - {"user_output"}:
        raise ValueError(f"output kinds {sorted(kinds - {'user_output'})} are not ones lcc writes")
    outputs = [reader.value(o) for o in graph_json["outputs"]]
    single = graph_json.get("is_single_tensor_return") and len(outputs) == 1
    reader.graph.output(outputs[0] if single else tuple(outputs))
    return torch.fx.GraphModule(attrs, reader.graph)


OTHER_ENTRIES = ("prefill_full", "prefill_logits")  # entries lowered on request (lcc diff, perplexity)


def _entries_in(out_dir: Path) -> tuple[str, ...]:
    """The entries a directory holds: prefill and decode (required) and those lowered on request, or only the
    latter when it holds no prefill or decode."""
    others = tuple(n for n in OTHER_ENTRIES if (out_dir / f"{n}.json").is_file())
    if others and not any((out_dir / f"{n}.json").is_file() for n in ENTRIES):
        return others
    return ENTRIES + others


class _Loaded:
    """The loaded entries (and ``meta["device"]`` once moved): what :func:`lcc.runtime.to_device` takes and gives."""

    def __init__(self, entries, meta=None):
        self.entries, self.meta = entries, meta or {}

    def with_entries(self, entries, meta=None) -> "_Loaded":
        return _Loaded(entries, meta)


class TorchBackend:
    name = "torch"
    dtypes = ("float32", "float16", "bfloat16")  # PyTorch runs the program in whatever dtype it was captured

    def available(self):
        return None

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        """Export ``entries`` (default prefill and decode) to ``out_dir``; ``target`` is where they run
        (PyTorch runs them on any device)."""
        check_dtype(self, dtype)
        check_program_dtype(program, dtype)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = WeightWriter()
        files, notes = [], []
        for name in entries or ENTRIES:
            ep, why = exported_program(program, name)
            if why:
                notes.append(f"{name}: exported again ({why})")
            graph = serialize_json(ep)  # JSON only: the state dict and constants go to the weights file
            for fqn, t in ep.state_dict.items():
                weights.add(fqn, t)
            for fqn, t in ep.constants.items():
                weights.add(_constant_name(name, fqn), t)
            (out_dir / f"{name}.json").write_bytes(graph)
            files.append(f"{name}.json")
            if progress:
                progress(name)
        weights.save(out_dir / WEIGHTS)
        return Lowered(files + [WEIGHTS], native={"attention": "lcc op (registered implementation)",
                                                  "rope": "lcc op (registered implementation)"}, notes=notes)

    def load(self, out_dir, manifest=None):
        import lcc.ops  # noqa: F401  (the saved programs call torch.ops.lcc.*)

        out_dir = Path(out_dir)
        names = _entries_in(out_dir)
        missing = [f for f in (*[f"{n}.json" for n in names], WEIGHTS) if not (out_dir / f).is_file()]
        if missing:
            raise UsageError(f"{out_dir} lacks {', '.join(missing)}: it was written by another lcc version or is "
                             "incomplete; recompile it with `lcc compile`")
        tensors = load_weights(out_dir / WEIGHTS)
        entries = {}
        for name in names:
            where = f"{out_dir / name}.json"
            tree = load_graph_json((out_dir / f"{name}.json").read_bytes(), where)
            prefix = _constant_name(name, "")
            constants = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
            try:
                entries[name] = graph_from_json(tree, tensors, constants)
            except (KeyError, TypeError, ValueError, AttributeError, StopIteration, RuntimeError) as e:
                raise UsageError(f"{where} does not load as an exported program "
                                 f"({type(e).__name__}: {str(e)[:120]}); recompile the artifact")
        loaded = _Loaded(entries)
        target = manifest.get("target") if isinstance(manifest, dict) else getattr(manifest, "target", None)
        if parse_target(target or "cpu").is_cuda:
            from lcc.runtime import to_device  # the program and (through meta) the cache go to the GPU

            return to_device(loaded, "cuda")
        return loaded


BACKEND = TorchBackend()
