"""CUDA builds: nvcc-compile TVM's generated kernels ahead of time, and reuse them at load.

TVM 0.27 keeps CUDA C source in a built library and compiles it when the library is loaded
(through the ``tvm_callback_cuda_compile`` hook: NVRTC by default, nvcc with
``TVM_CUDA_COMPILE_MODE=nvcc``).  So that a ``cuda`` build is checked here, where there is no
GPU, and loads on a GPU machine without compiling again, :func:`precompile` runs this machine's
nvcc on every CUDA source of the build (a fatbin for the target's arch, saved beside the
library, keyed by the source's SHA-256), and :func:`use_precompiled` makes the load-time hook
answer with those fatbins, falling back to TVM's own compiler for any source it does not know.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

# sha256 of a CUDA source -> its fatbin, for every precompiled library loaded in this process
_FATBINS: dict[str, bytes] = {}
_HOOKED = False


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def device_sources(executable) -> list[str]:
    """The CUDA C sources of every ``cuda`` device module a built executable imports."""
    found, seen = [], set()

    def walk(m):
        if m in seen:
            return
        seen.add(m)
        if m.kind == "cuda":
            found.append(m.inspect_source("cuda"))
        for child in m.imports:
            walk(child)

    walk(executable.mod)
    return found


def nvcc_version() -> str:
    out = subprocess.run([shutil.which("nvcc") or "nvcc", "--version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def precompile(executable, target, out_dir: Path, stem: str) -> list[dict]:
    """nvcc each CUDA source of ``executable`` for ``target``'s arch; ``[{sha256, file, bytes}]``."""
    from tvm.support import nvcc

    arch = str(target.attrs["arch"])
    kernels = []
    for i, code in enumerate(device_sources(executable)):
        with target:  # TVM's nvcc wrapper reads the arch of the current target
            fatbin = bytes(nvcc.compile_cuda(code, target_format="fatbin", arch=arch, compiler="nvcc"))
        name = f"{stem}.{i}.fatbin"
        (Path(out_dir) / name).write_bytes(fatbin)
        kernels.append({"sha256": _digest(code), "file": name, "bytes": len(fatbin)})
    return kernels


def use_precompiled(out_dir: Path, kernels: list[dict]) -> None:
    """Serve these fatbins when TVM compiles CUDA source at load; other sources go to TVM's hook."""
    global _HOOKED
    for k in kernels:
        from lcc.integrity import inside

        _FATBINS[k["sha256"]] = inside(out_dir, k["file"], "tvm.json").read_bytes()
    if _HOOKED:
        return
    import tvm_ffi
    from tvm.support import nvcc

    fallback = nvcc.tvm_callback_cuda_compile

    def compile_or_reuse(code, *rest):
        hit = _FATBINS.get(_digest(str(code)))
        return hit if hit is not None else fallback(code, *rest)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_or_reuse, override=True)
    _HOOKED = True
