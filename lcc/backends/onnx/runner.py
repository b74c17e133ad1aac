"""Run a lowered ONNX artifact with onnxruntime, with the program's call convention.

``OnnxProgram(out_dir).entries["prefill"](input_ids, *cache)`` and
``.entries["decode"](input_ids, position, *cache)`` take torch tensors or numpy arrays and
return torch tensors (logits, *cache), as the program's entry graphs do, so
:func:`lcc.runtime.generate_ids` drives it unchanged.  The CUDA provider is used when this
onnxruntime has it, else the CPU.
"""

from __future__ import annotations

import json
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

    def __call__(self, *args):
        if len(args) != len(self.inputs):
            raise TypeError(f"expected {len(self.inputs)} inputs ({', '.join(self.inputs[:3])}, ...), got {len(args)}")
        outs = self.session.run(None, {name: _numpy(a) for name, a in zip(self.inputs, args)})
        return tuple(torch.from_numpy(o) for o in outs)


class OnnxProgram:
    """A lowered program loaded from ``out_dir``: ``entries``, ``cache``, ``providers`` and :meth:`generate`."""

    def __init__(self, out_dir, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        self.out_dir = Path(out_dir)
        self.manifest = json.loads((self.out_dir / MANIFEST).read_text())
        self.providers = providers or default_providers()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.entries = {}
        for name, entry in self.manifest["entries"].items():
            session = ort.InferenceSession(str(self.out_dir / entry["file"]), so, providers=self.providers)
            self.entries[name] = _Entry(session, [i.name for i in session.get_inputs()])
        self.cache = CacheLayout(**self.manifest["cache"])

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, stop=frozenset()) -> list[int]:
        """Greedy decoding, one prefill then one decode per token (:func:`lcc.runtime.generate_ids`)."""
        from lcc.runtime import generate_ids

        return generate_ids(self, torch.as_tensor(prompt_ids), max_new_tokens, stop)
