"""Run a lowered ONNX artifact with onnxruntime, with the program's call convention.

``OnnxProgram(out_dir).entries["prefill"](input_ids, *cache)`` and
``.entries["decode"](input_ids, position, *cache)`` take torch tensors or numpy arrays and
return torch tensors (logits, *cache), as the program's entry graphs do, so
:func:`lcc.runtime.generate_ids` drives it unchanged.  The providers are those of the artifact's
target (``onnx.json``; :mod:`.cuda`).  Every call runs through onnxruntime's IOBinding, on the CPU
as on CUDA: the cache lives in torch tensors on the artifact's device (``meta["device"]``, where
``generate_ids`` allocates it) and is bound by pointer, inputs and outputs.  Where an entry's graph
updates the cache with GroupQueryAttention (``cache_in_place``), each present output is bound to
its past input's buffer (onnxruntime-genai's shared past/present buffer: only the new tokens are
written); elsewhere to a fresh buffer on the same device.  A decode step thus moves no cache
between host and device; only the logits come back to the host, where the next token is picked.
torch owns the device memory (not OrtValues) so that the entries keep taking and returning torch tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lcc.backends.onnx import cuda
from lcc.backends.onnx.lower import MANIFEST
from lcc.capture.program import CacheLayout

# torch dtype -> onnx.TensorProto element type, as IOBinding takes it (numpy has no bfloat16 / float8)
ONNX_TYPES = {torch.float32: 1, torch.uint8: 2, torch.int8: 3, torch.int32: 6, torch.int64: 7, torch.bool: 9,
              torch.float16: 10, torch.bfloat16: 16, torch.float8_e4m3fn: 17}


def _tensor(x, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a contiguous torch tensor, moved to ``device`` when one is given (the cache, on its first call)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.require(x, requirements=("C", "W")))
    if device is not None and t.device != device:
        t = t.to(device)
    return t.contiguous()


def _bind(binding, kind: str, name: str, t: torch.Tensor) -> None:
    """Bind ``t``'s memory as input or output ``name`` (no copy, on whatever device it lives)."""
    getattr(binding, f"bind_{kind}")(name, t.device.type, t.device.index or 0, ONNX_TYPES[t.dtype], list(t.shape),
                                     t.data_ptr())


class _Entry:
    """One inference session called positionally with the entry's inputs, through IOBinding on ``device``.

    ``in_place``: the graph's present outputs may share their past inputs' buffers (the cache tensors
    passed in are then updated and returned as the new cache); else each present gets a new buffer.
    """

    def __init__(self, session, inputs: list[str], device: torch.device, in_place: bool):
        self.session, self.inputs, self.device, self.in_place = session, inputs, device, in_place
        self.outputs = [o.name for o in session.get_outputs()]
        self.cache_inputs = [i for i, name in enumerate(inputs) if name.startswith("past")]

    def __call__(self, *args):
        if len(args) != len(self.inputs):
            raise TypeError(f"expected {len(self.inputs)} inputs ({', '.join(self.inputs[:3])}, ...), got {len(args)}")
        tensors = [_tensor(a, self.device if i in self.cache_inputs else None) for i, a in enumerate(args)]
        binding = self.session.io_binding()
        for name, t in zip(self.inputs, tensors):  # small inputs where they are: onnxruntime copies them over
            _bind(binding, "input", name, t)
        cache = [tensors[i] for i in self.cache_inputs]
        present = iter(cache if self.in_place else [torch.empty_like(c) for c in cache])
        results = []
        for name in self.outputs:  # the cache outputs in cache order (lcc.backends.onnx.export.io_names)
            if name.startswith("present"):
                results.append(next(present))
                _bind(binding, "output", name, results[-1])
            else:
                results.append(None)
                binding.bind_output(name, self.device.type, self.device.index or 0)
        if self.device.type == "cuda":  # torch's writes (a fresh cache, a moved input) land before onnxruntime reads
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        values = binding.get_outputs()
        return tuple(torch.from_numpy(values[i].numpy()) if r is None else r for i, r in enumerate(results))


class OnnxProgram:
    """A lowered program loaded from ``out_dir``: ``entries``, ``cache``, ``providers``, ``meta`` and :meth:`generate`.

    ``providers`` overrides the target's (a cuda artifact's fp16 graphs also run on ``["CPUExecutionProvider"]``).
    """

    def __init__(self, out_dir, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        from lcc.integrity import backend_manifest, inside
        from lcc.target import parse_target

        self.out_dir = Path(out_dir)
        self.manifest = backend_manifest(self.out_dir, MANIFEST)
        self.target = parse_target(self.manifest.get("target"))  # artifacts from before the field: the CPU
        if providers is None:
            cuda.check_providers(self.target, str(self.out_dir))
        self.providers = providers or cuda.providers(self.target)
        device = torch.device("cuda", 0) if self.providers[0] == cuda.CUDA else torch.device("cpu")
        self.meta = {"device": str(device)}  # lcc.runtime.device_of: where generate_ids allocates the cache
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.entries = {}
        for name, entry in self.manifest["entries"].items():
            path = inside(self.out_dir, entry["file"], MANIFEST)
            session = ort.InferenceSession(str(path), so, providers=self.providers)
            self.entries[name] = _Entry(session, [i.name for i in session.get_inputs()], device,
                                        bool(entry.get("cache_in_place")))
        self.cache = CacheLayout.from_dict(self.manifest["cache"])

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, stop=frozenset()) -> list[int]:
        """Greedy decoding, one prefill then one decode per token (:func:`lcc.runtime.generate_ids`)."""
        from lcc.runtime import generate_ids

        return generate_ids(self, torch.as_tensor(prompt_ids), max_new_tokens, stop)
