"""The TVM backend: lcc programs imported into Relax, built for ``llvm`` (and ``cuda``), run on the Relax VM.

Importing this package never fails: without ``apache-tvm`` it only sets ``AVAILABLE = False`` and
``BACKEND.available()`` says why.  With it, ``lcc.attention`` and ``lcc.rope`` get Relax
converters registered as their ``tvm`` lowerings (:mod:`lcc.backends.tvm.register`).

- :func:`lower` ``(program, out_dir, target="llvm")``: build and save (``tvm.json``,
  ``weights.safetensors``, ``model.<target>.so``); returns the manifest.
- :class:`TvmProgram` ``(out_dir)``: load it back with the program's entry-point convention.

``lcc compile --target`` picks the build (:func:`tvm_target`): ``cpu`` is ``llvm``, ``cuda:sm_80`` /
``cuda:sm_90`` is ``cuda -arch=sm_XX`` (``cuda``: the local GPU's arch, else sm_90); ``load`` runs
the library of the artifact's recorded target.
"""

from __future__ import annotations

import shutil

try:
    import tvm  # noqa: F401
    from tvm.relax.frontend.torch import from_exported_program  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    AVAILABLE, _WHY = False, f"apache-tvm is not installed ({e}): pip install 'apache-tvm>=0.20'"
else:
    AVAILABLE, _WHY = True, None

from lcc.backends import Lowered, check_dtype, check_program_dtype
from lcc.target import Target, parse_target

if AVAILABLE:
    from lcc.backends.tvm import register  # noqa: F401  (registers the tvm lowerings)
    from lcc.backends.tvm.lowering import lower  # noqa: F401
    from lcc.backends.tvm.runner import TvmProgram  # noqa: F401

CUDA_TARGET = "cuda -arch=sm_90"  # the cuda build default_targets adds where nvcc is (the H100's arch)


def tvm_target(target: Target) -> str:
    """The TVM target string of an lcc target: ``llvm``, or ``cuda -arch=<the target's arch>``."""
    return f"cuda -arch={target.resolved_arch()}" if target.is_cuda else "llvm"


def cuda_unavailable() -> str | None:
    """Why a ``cuda`` build cannot be compiled here (no CUDA codegen in TVM, no nvcc), or None."""
    if not AVAILABLE:
        return _WHY
    import tvm

    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        return "this apache-tvm build has no CUDA codegen (target.build.cuda is missing; USE_CUDA=OFF)"
    if shutil.which("nvcc") is None:
        return "nvcc is not on PATH (TVM compiles CUDA C with nvcc)"
    return None


class TvmBackend:
    """``lcc compile --backend tvm``: builds the target's library; without a target ``llvm``, plus
    ``cuda -arch=sm_90`` where nvcc and CUDA codegen exist."""

    name = "tvm"
    dtypes = ("float32",)
    dtype_refusals = {d: "TVM's torch importer turns a half-precision linear into an fp32 matmul and carries fp32 "
                         "activations on from there, so the build would not compute in that dtype"
                      for d in ("float16", "bfloat16")}

    def __init__(self, targets: tuple[str, ...] | None = None):
        self.targets = targets

    def available(self) -> str | None:
        return _WHY

    def default_targets(self) -> list[str]:
        if self.targets is not None:
            return list(self.targets)
        return ["llvm"] + ([CUDA_TARGET] if cuda_unavailable() is None else [])

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        """Build ``entries`` (default prefill and decode) for ``target`` (an lcc target, :func:`tvm_target`;
        default: every target of :meth:`default_targets`)."""
        check_dtype(self, dtype)
        check_program_dtype(program, dtype)
        targets = self.default_targets() if target is None else [tvm_target(parse_target(target))]
        kwargs = {} if entries is None else {"entries": tuple(entries)}
        manifest = lower(program, out_dir, target=targets, progress=progress, **kwargs)
        fallbacks = sorted({f["op"] for f in manifest["fallbacks"]})
        notes = [f"{f['entry']}: {f['node']} ({f['op']}) runs as its {f['as']} decomposition: {f['why']}"
                 for f in manifest["fallbacks"]]
        notes += manifest["notes"]
        notes += [f"tvm {manifest['tvm_version']}; built for {', '.join(manifest['libraries'])}"]
        fatbins = [k["file"] for kernels in manifest["cuda_kernels"].values() for k in kernels]
        files = ["tvm.json", manifest["weights"], *manifest["libraries"].values(), *fatbins]
        return Lowered(files, native=dict(manifest["native"]), fallbacks=fallbacks, notes=notes,
                       timings=dict(manifest["timings"]))

    def load(self, out_dir, manifest: dict | None = None):
        """The artifact's library for its recorded target (``lcc.json``'s; without a manifest, ``llvm``)."""
        where = parse_target(manifest["target"] if manifest is not None else None)
        return TvmProgram(out_dir, device=where.kind)

    def native_files(self, out_dir) -> list[str]:
        """The libraries and CUDA fatbins ``tvm.json`` lists (native code)."""
        from lcc.integrity import backend_manifest, listed

        m = backend_manifest(out_dir, "tvm.json")
        kernels = m.get("cuda_kernels", {})
        fatbins = [k for ks in kernels.values() for k in ks] if isinstance(kernels, dict) else []
        return listed(m, "libraries", "tvm.json", out_dir) + listed({"k": fatbins}, "k", "tvm.json", out_dir)


BACKEND = TvmBackend()
