"""Backends lower lcc programs to files and load them back to run: one protocol, one registry.

Every backend implements :class:`Backend`: ``lower(program, out_dir, *, target, dtype, entries,
progress) -> Lowered`` writes its files (the entries asked for, default prefill and decode) and
says what it did (the ops it lowered natively and those that fell back to their reference
decomposition); ``load(out_dir, manifest=None)`` returns an object whose ``entries`` are
callables with the program's entry-point signatures.  Op lowerings are
:class:`lcc.ops.registry.Lowering` records registered by the backend; the walk that applies
them is :func:`lcc.backends.nodes.prepare_nodes`.  A backend never reaches into a pass.
New backends register with :func:`register_backend`, from anywhere.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from lcc.errors import UsageError


@dataclass
class Lowered:
    files: list[str]
    native: dict[str, str] = field(default_factory=dict)  # op -> how the backend implements it
    fallbacks: list[str] = field(default_factory=list)  # ops run as their reference decomposition
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # wall-clock seconds: report.json, never lcc.json


class Backend(Protocol):
    name: str

    def available(self) -> str | None: ...  # None if usable here, else why not

    def lower(self, program, out_dir, *, target: str | None = None, dtype: str = "float32",
              entries: Sequence[str] | None = None,
              progress: Callable[[str], None] | None = None) -> Lowered: ...

    def load(self, out_dir, manifest: dict | None = None) -> Any: ...

    # A backend whose files hold native code also has ``native_files(out_dir) -> list[str]``: the files its
    # manifest lists that ``load`` would execute (lcc.integrity gates them).


DTYPES = ("float32",)  # what backends lower today; the GPU issue adds half precision


def check_dtype(backend: str, dtype: str) -> None:
    """Usage error unless backend ``backend`` can lower programs to ``dtype``."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: the {backend} backend lowers {', '.join(DTYPES)} programs")


# name -> the backend object, or the module path of a module that defines BACKEND
_BACKENDS: dict[str, Any] = {
    "torch": "lcc.backends.torch_export",
    "onnx": "lcc.backends.onnx",
    "tvm": "lcc.backends.tvm",
    "triton": "lcc.backends.triton.compile",
}


def register_backend(name: str, backend) -> None:
    """Make ``backend`` (an object implementing :class:`Backend`, or a module path defining ``BACKEND``)
    available as ``--backend name``."""
    _BACKENDS[name] = backend


def names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}; backends: {', '.join(_BACKENDS)}")
    backend = _BACKENDS[name]
    if isinstance(backend, str):
        try:
            backend = importlib.import_module(backend).BACKEND
        except (ImportError, AttributeError) as e:
            raise UsageError(f"backend {name!r} is not available in this installation ({e})")
    why = backend.available()
    if why:
        raise UsageError(f"backend {name!r} cannot run here: {why}")
    return backend
