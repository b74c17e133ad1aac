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
loader falls back to an unrestricted unpickle. The JSON is checked before torch
reads it (:mod:`lcc.backends.safe_graph`), because torch's deserializer resolves
node targets by name and evaluates shape expressions and guard code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lcc.backends import Lowered, check_dtype
from lcc.backends.safe_graph import check_graph_json
from lcc.errors import UsageError

WEIGHTS = "weights.safetensors"
ENTRIES = ("prefill", "decode")


def export_entry(program, name: str, gm: torch.fx.GraphModule | None = None, seq_len: int | None = None):
    """Re-export one entry graph (``gm``, default the program's own): the sequence length of prefill-like
    entries dynamic, or fixed at ``seq_len``."""
    gm = program.entries[name] if gm is None else gm
    shapes = program.dynamic_shapes(name) if seq_len is None else None
    with torch.no_grad():
        return torch.export.export(gm, program.example_inputs(name, seq_len), dynamic_shapes=shapes, strict=False)


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

        save_file(self.tensors, str(path), metadata={"lcc.aliases": json.dumps(self.aliases, sort_keys=True),
                                                     "lcc.parameters": json.dumps(sorted(self.parameters))})


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


OTHER_ENTRIES = ("prefill_full", "prefill_logits")  # entries lowered on request (lcc diff, perplexity)


def _entries_in(out_dir: Path) -> tuple[str, ...]:
    """The entries a directory holds: prefill and decode (required) and those lowered on request, or only the
    latter when it holds no prefill or decode."""
    others = tuple(n for n in OTHER_ENTRIES if (out_dir / f"{n}.json").is_file())
    if others and not any((out_dir / f"{n}.json").is_file() for n in ENTRIES):
        return others
    return ENTRIES + others


class _Loaded:
    def __init__(self, entries):
        self.entries = entries


class TorchBackend:
    name = "torch"

    def available(self):
        return None

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        """Export ``entries`` (default prefill and decode) to ``out_dir``; ``target`` is where they run
        (PyTorch runs them on any device)."""
        from torch._export.serde.serialize import serialize

        check_dtype(self.name, dtype)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = WeightWriter()
        files = []
        for name in entries or ENTRIES:
            ep = export_entry(program, name)
            graph = serialize(ep).exported_program  # JSON bytes; its state dict / constants / inputs are not kept
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
                                                  "rope": "lcc op (registered implementation)"})

    def load(self, out_dir, manifest=None):
        import lcc.ops  # noqa: F401  (the saved programs call torch.ops.lcc.*)
        from torch._export.serde.serialize import SerializedArtifact, deserialize

        out_dir = Path(out_dir)
        names = _entries_in(out_dir)
        missing = [f for f in (*[f"{n}.json" for n in names], WEIGHTS) if not (out_dir / f).is_file()]
        if missing:
            raise UsageError(f"{out_dir} lacks {', '.join(missing)}: it was written by another lcc version or is "
                             "incomplete; recompile it with `lcc compile`")
        tensors = load_weights(out_dir / WEIGHTS)
        entries = {}
        for name in names:
            graph = check_graph_json((out_dir / f"{name}.json").read_bytes(), f"{out_dir / name}.json")
            prefix = _constant_name(name, "")
            constants = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
            try:
                ep = deserialize(SerializedArtifact(graph, tensors, constants, b""))
            except Exception as e:  # noqa: BLE001  (torch raises many types on a malformed graph)
                raise UsageError(f"{out_dir / name}.json does not load as an exported program "
                                 f"({type(e).__name__}: {str(e)[:120]}); recompile the artifact")
            entries[name] = ep.module()
        return _Loaded(entries)


BACKEND = TorchBackend()
