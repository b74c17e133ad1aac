"""Backends lower lcc programs to files and load them back to run.

Each backend registers itself here by name and registers its op lowerings with
``lcc.ops.registry.register_lowering``; a backend never reaches into a pass.
``lower(program, out_dir)`` writes the backend's files and returns what it did
(files, the ops it lowered natively and those that fell back to the reference
decomposition); ``load(out_dir, manifest)`` returns an object whose ``entries``
are callables with the program's entry-point signatures.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from lcc.errors import UsageError


@dataclass
class Lowered:
    files: list[str]
    native: dict[str, str] = field(default_factory=dict)  # op -> how the backend implements it
    fallbacks: list[str] = field(default_factory=list)  # ops run as their reference decomposition
    notes: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: str

    def available(self) -> str | None: ...  # None if usable here, else why not

    def lower(self, program, out_dir, progress=None) -> Lowered: ...

    def load(self, out_dir, manifest: dict) -> Any: ...


# name -> module that defines BACKEND
_MODULES = {
    "torch": "lcc.backends.torch_export",
    "onnx": "lcc.backends.onnx",
    "tvm": "lcc.backends.tvm",
    "triton": "lcc.backends.triton.compile",
}


def names() -> list[str]:
    return list(_MODULES)


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise UsageError(f"unknown backend {name!r}; backends: {', '.join(_MODULES)}")
    try:
        module = importlib.import_module(_MODULES[name])
        backend = module.BACKEND
    except (ImportError, AttributeError) as e:
        raise UsageError(f"backend {name!r} is not available in this installation ({e})")
    why = backend.available()
    if why:
        raise UsageError(f"backend {name!r} cannot run here: {why}")
    return backend
