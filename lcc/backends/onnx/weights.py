"""One external-data file for every model of an artifact, each distinct tensor stored once.

``prefill.onnx``, ``decode.onnx`` and the onnxruntime-genai ``model.onnx`` hold the same
weights (after onnxruntime's optimisations, sometimes under different names); their
initializers are rewritten to point into one ``weights.bin`` where equal bytes are shared.
Large tensors are page-aligned so onnxruntime can map them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo  # noqa: F401  (documents the layout used)

WEIGHTS = "weights.bin"
INLINE_BYTES = 1024  # tensors smaller than this stay inside the .onnx file
PAGE = 4096


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph under it (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _set_external(t: onnx.TensorProto, offset: int, length: int, location: str) -> None:
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def share_weights(models: list[Path], out_dir: Path, name: str = WEIGHTS) -> dict:
    """Rewrite ``models`` (in ``out_dir``) to read their initializers from one shared ``name``.

    Each model's own external-data files are deleted afterwards.  Returns byte counts.
    """
    out_dir = Path(out_dir)
    seen: dict[bytes, tuple[int, int]] = {}
    stored = referenced = 0
    old_files: set[Path] = set()
    with open(out_dir / name, "wb") as f:
        for path in models:
            proto = onnx.load(str(path), load_external_data=False)
            old_files |= {path.parent / e.value for g in _graphs(proto.graph) for t in g.initializer
                          for e in t.external_data if e.key == "location"}
            onnx.load_external_data_for_model(proto, str(path.parent))
            for graph in _graphs(proto.graph):
                for t in graph.initializer:
                    if not t.HasField("raw_data") or len(t.raw_data) < INLINE_BYTES:
                        continue
                    data = t.raw_data
                    key = hashlib.sha256(data).digest()
                    if key not in seen:
                        pad = (-f.tell()) % (PAGE if len(data) >= PAGE else 64)
                        f.write(b"\0" * pad)
                        seen[key] = (f.tell(), len(data))
                        f.write(data)
                        stored += len(data)
                    referenced += len(data)
                    _set_external(t, *seen[key], name)
            onnx.save_model(proto, str(path))
    for old in old_files - {out_dir / name}:
        old.unlink(missing_ok=True)
    return {"stored_bytes": stored, "referenced_bytes": referenced, "tensors": len(seen)}
