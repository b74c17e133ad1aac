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

from lcc.dtypes import DTYPES  # every dtype lcc lowers to; each backend says which of them it can
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
    dtypes: tuple[str, ...]  # the dtypes ``lower`` can emit (weights and compute); absent: float32 only

    def available(self) -> str | None: ...  # None if usable here, else why not

    def lower(self, program, out_dir, *, target: str | None = None, dtype: str = "float32",
              entries: Sequence[str] | None = None,
              progress: Callable[[str], None] | None = None) -> Lowered: ...

    def load(self, out_dir, manifest: dict | None = None) -> Any: ...

    # A backend whose files hold native code also has ``native_files(out_dir) -> list[str]``: the files its
    # manifest lists that ``load`` would execute (lcc.integrity gates them).


def _resolve(backend):
    """The backend object of a registered name (imported if need be), or ``backend`` itself."""
    if isinstance(backend, str):
        backend = _BACKENDS.get(backend)
        if isinstance(backend, str):
            backend = getattr(importlib.import_module(backend), "BACKEND", None)
    return backend


def backend_dtypes(backend) -> tuple[str, ...]:
    """The dtypes ``backend`` (a backend object, or the name it is registered under) can emit."""
    return tuple(getattr(_resolve(backend), "dtypes", ("float32",)))


def default_dtype(backend, target: str) -> str:
    """``--dtype`` when none is given: float32 on a CPU target; on a GPU target the backend's own choice where it
    states one (ONNX: float16, what onnxruntime's CUDA GroupQueryAttention runs), else bfloat16 where the backend
    emits it (no deployment runs an LLM in fp32 on a GPU), else float32."""
    from lcc.target import parse_target

    backend = _resolve(backend)
    if not parse_target(target).is_cuda:
        return "float32"
    if hasattr(backend, "default_dtype"):
        return backend.default_dtype(target)
    return "bfloat16" if "bfloat16" in backend_dtypes(backend) else "float32"


def check_dtype(backend, dtype: str) -> None:
    """Usage error unless ``backend`` (a backend object, or its registered name) can emit ``dtype``.

    A backend may say why it refuses a dtype in ``dtype_refusals`` ({dtype: reason}); the reason ends the line.
    """
    name = backend if isinstance(backend, str) else backend.name
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: lcc lowers {', '.join(DTYPES)}")
    emits = backend_dtypes(backend)
    if dtype not in emits:
        why = getattr(_resolve(backend), "dtype_refusals", {}).get(dtype)
        raise UsageError(f"--dtype {dtype}: the {name} backend emits {', '.join(emits)}" + (f" ({why})" if why else ""))


def check_program_dtype(program, dtype: str) -> None:
    """RuntimeError unless the program's floating-point parameters are all ``dtype``.

    The model is loaded and captured in the artifact's dtype; a backend emits what it is given and never
    casts, so the cache layout and entry signatures recorded for the program stay true of the artifact.
    """
    found = {str(p.dtype).removeprefix("torch.") for gm in program.entries.values() for p in gm.parameters()
             if p.is_floating_point()}
    if found - {dtype}:
        raise RuntimeError(f"lowering to {dtype} a program whose weights are {', '.join(sorted(found))}: "
                           f"load the model in {dtype} before capture")


# name -> the backend object, or the module path of a module that defines BACKEND
_BACKENDS: dict[str, Any] = {
    "torch": "lcc.backends.torch_export",
    "onnx": "lcc.backends.onnx",
    "tvm": "lcc.backends.tvm",
    "triton": "lcc.backends.triton.compile",
    "hf": "lcc.backends.hf",
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
