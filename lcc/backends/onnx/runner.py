"""Run a lowered ONNX artifact with onnxruntime, with the program's call convention.

``OnnxProgram(out_dir).entries["prefill"](input_ids, *cache)`` and
``.entries["decode"](input_ids, position, *cache)`` take torch tensors or numpy arrays and
return torch tensors (logits, *cache), as the program's entry graphs do, so
:func:`lcc.runtime.generate_ids` drives it unchanged.  Where an entry's graph updates the cache
with GroupQueryAttention (``cache_in_place`` in ``onnx.json``: decode, and prefill when its attention
blocks fused), the entry writes into the cache tensors it is given and returns them.  The CUDA provider is used when this
onnxruntime has it, else the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lcc.backends.onnx.lower import MANIFEST
from lcc.capture.program import CacheLayout


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(x)


class _Entry:
    """One inference session called positionally with the entry's inputs."""

    def __init__(self, session, inputs: list[str]):
        self.session, self.inputs = session, inputs
        self.outputs = [o.name for o in session.get_outputs()]

    def _check(self, args):
        if len(args) != len(self.inputs):
            raise TypeError(f"expected {len(self.inputs)} inputs ({', '.join(self.inputs[:3])}, ...), got {len(args)}")

    def __call__(self, *args):
        self._check(args)
        outs = self.session.run(None, {name: _numpy(a) for name, a in zip(self.inputs, args)})
        return tuple(torch.from_numpy(o) for o in outs)


class _InPlaceEntry(_Entry):
    """An entry whose cache outputs are bound to its cache inputs' memory: the cache is updated in place.

    GroupQueryAttention writes the new key/value into the bound buffer instead of copying the whole
    cache to a fresh output every step (onnxruntime-genai's shared past/present buffer).  The cache
    tensors passed in are modified and returned as the new cache (CPU only).
    """

    def __call__(self, *args):
        self._check(args)
        binding = self.session.io_binding()
        arrays = dict(zip(self.inputs, (_numpy(a) for a in args)))
        bound = dict(zip((o for o in self.outputs if o.startswith("present")),
                         (a for name, a in arrays.items() if name.startswith("past"))))
        for name, arr in arrays.items():  # the cache by pointer (no copy), the small inputs as they are
            if name.startswith("past"):
                binding.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
            else:
                binding.bind_cpu_input(name, arr)
        for name in self.outputs:
            arr = bound.get(name)
            if arr is None:
                binding.bind_output(name, "cpu")
            elif not arr.flags.writeable:
                raise ValueError(f"{name}: the cache is updated in place and must be writeable")
            else:
                binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        self.session.run_with_iobinding(binding)
        values = dict(zip(self.outputs, binding.get_outputs()))
        return tuple(torch.from_numpy(bound[name]) if name in bound else torch.from_numpy(values[name].numpy())
                     for name in self.outputs)


class OnnxProgram:
    """A lowered program loaded from ``out_dir``: ``entries``, ``cache``, ``providers`` and :meth:`generate`."""

    def __init__(self, out_dir, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        from lcc.integrity import backend_manifest, inside

        self.out_dir = Path(out_dir)
        self.manifest = backend_manifest(self.out_dir, MANIFEST)
        self.providers = providers or default_providers()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.entries = {}
        for name, entry in self.manifest["entries"].items():
            session = ort.InferenceSession(str(inside(self.out_dir, entry["file"], MANIFEST)), so, providers=self.providers)
            in_place = entry.get("cache_in_place") and self.providers[0] == "CPUExecutionProvider"
            kind = _InPlaceEntry if in_place else _Entry
            self.entries[name] = kind(session, [i.name for i in session.get_inputs()])
        self.cache = CacheLayout.from_dict(self.manifest["cache"])

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, stop=frozenset()) -> list[int]:
        """Greedy decoding, one prefill then one decode per token (:func:`lcc.runtime.generate_ids`)."""
        from lcc.runtime import generate_ids

        return generate_ids(self, torch.as_tensor(prompt_ids), max_new_tokens, stop)
