"""Run a lowered TVM artifact: the library on the Relax VM, with the program's call convention.

``TvmProgram(out_dir).entries["prefill"](input_ids, *cache)`` and
``.entries["decode"](input_ids, position, *cache)`` take and return torch tensors, exactly as
the program's entry graphs do, so :func:`lcc.runtime.generate_ids` drives it unchanged.
Tensors cross between torch and TVM through DLPack, without a copy where torch holds them on the
library's device: on CUDA the cache stays on the GPU from one step to the next (``meta["device"]``
tells ``generate_ids`` to allocate it there).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lcc.backends.tvm.lowering import MANIFEST
from lcc.capture.program import CacheLayout


_DLPACK = {"cpu": 1, "cuda": 2}  # DLPack device types (kDLCPU, kDLCUDA)


def _to_tvm(t: torch.Tensor, dev):
    import tvm

    t = t.detach().contiguous()
    if _DLPACK.get(t.device.type) == dev.dlpack_device_type() and t.data_ptr() % 64 == 0:
        return tvm.runtime.from_dlpack(t)  # no copy; TVM wants 64-byte aligned data
    return tvm.runtime.tensor(t.cpu().numpy(), dev)


def _to_torch(x) -> torch.Tensor:
    try:
        return torch.from_dlpack(x)
    except (RuntimeError, TypeError, BufferError):  # a device torch was not built for
        return torch.from_numpy(x.numpy())


class _Entry:
    """One VM function with its weights bound after the user inputs."""

    def __init__(self, fn, weights, dev):
        self.fn, self.weights, self.dev = fn, weights, dev

    def __call__(self, *args):
        out = self.fn(*[_to_tvm(a, self.dev) for a in args], *self.weights)
        return tuple(_to_torch(x) for x in out)


class TvmProgram:
    """A lowered program loaded from ``out_dir``: ``entries``, ``cache``, ``meta`` and :meth:`generate`.

    ``target`` names the library (a key of ``tvm.json``'s ``libraries``); else the first of ``device``'s kind."""

    def __init__(self, out_dir, target: str | None = None, device: str = "cpu"):
        import tvm
        from safetensors.torch import load_file

        from lcc.integrity import backend_manifest, inside

        self.out_dir = Path(out_dir)
        self.manifest = backend_manifest(self.out_dir, MANIFEST)
        self.target = target or self._default_target(device)
        lib = self.manifest["libraries"].get(self.target)
        if lib is None:
            raise FileNotFoundError(f"{out_dir} has no library for target {self.target!r}; "
                                    f"it has {', '.join(self.manifest['libraries'])}")
        self.device = tvm.cpu(0)
        if self.target.split()[0] == "cuda":
            from lcc.backends.tvm.cuda import use_precompiled

            use_precompiled(self.out_dir, self.manifest.get("cuda_kernels", {}).get(self.target, []))
            self.device = tvm.cuda(0)
        self.meta = {"device": "cuda" if self.target.split()[0] == "cuda" else "cpu"}  # lcc.runtime.device_of
        library = inside(self.out_dir, lib, MANIFEST)  # never a path outside the artifact
        self.vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(library)), self.device)
        stored = load_file(str(inside(self.out_dir, self.manifest["weights"], MANIFEST)))
        on_device = {name: _to_tvm(t, self.device) for name, t in stored.items()}
        self.entries = {name: _Entry(self.vm[name], [on_device[w] for w in e["weights"]], self.device)
                        for name, e in self.manifest["entries"].items()}
        self.cache = CacheLayout.from_dict(self.manifest["cache"])

    def _default_target(self, device: str) -> str:
        kind = "cuda" if device.startswith("cuda") else "llvm"
        for target in self.manifest["libraries"]:
            if target.split()[0] == kind:
                return target
        raise FileNotFoundError(f"{self.out_dir} has no {kind} library; it has {', '.join(self.manifest['libraries'])}")

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, stop=frozenset()) -> list[int]:
        """Greedy decoding, one prefill then one decode per token (:func:`lcc.runtime.generate_ids`)."""
        from lcc.runtime import generate_ids

        return generate_ids(self, prompt_ids, max_new_tokens, stop)
