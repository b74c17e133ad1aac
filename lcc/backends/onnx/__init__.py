"""The ONNX backend: lcc programs exported with ``torch.onnx`` (dynamo), run by onnxruntime.

Importing this package never fails: without ``onnx``/``onnxscript``/``onnxruntime`` it only sets
``AVAILABLE = False`` and ``BACKEND.available()`` says why.  With them, ``lcc.attention`` and
``lcc.rope`` get onnxscript translations registered as their ``onnx`` lowerings
(:mod:`lcc.backends.onnx.register`).

- :func:`lower` ``(program, out_dir, optimize=True, entries=..., target="cpu")``: ``prefill.onnx``,
  ``decode.onnx``, ``weights.bin``, ``onnx.json``, and where the cache is plain an onnxruntime-genai
  ``model.onnx`` + ``genai_config.json``; returns the manifest.
- :class:`OnnxProgram` ``(out_dir)``: load it back with the program's entry-point convention, on the
  providers of the target it was lowered for (:mod:`.cuda`).
"""

from __future__ import annotations

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    AVAILABLE, _WHY = False, f"the onnx backend needs onnx, onnxscript and onnxruntime ({e}): pip install lcc[onnx]"
else:
    AVAILABLE, _WHY = True, None

from lcc.backends import Lowered, check_dtype, check_program_dtype
from lcc.target import parse_target

if AVAILABLE:
    from lcc.backends.onnx import register  # noqa: F401  (registers the onnx lowerings)
    from lcc.backends.onnx.lower import lower  # noqa: F401
    from lcc.backends.onnx.runner import OnnxProgram  # noqa: F401


def _tokenizer_for(program):
    """The tokenizer of the program's model, when it can be found without loading weights (genai ids)."""
    from pathlib import Path

    from lcc.models.loader import DEFAULT_MODEL, cache_dir

    model_id = program.meta.get("model_id") or program.spec.model_id
    try:
        if model_id.startswith("tiny-"):
            from lcc.models.tiny import byte_tokenizer

            return byte_tokenizer()
        path = cache_dir() / DEFAULT_MODEL if model_id == DEFAULT_MODEL else Path(model_id)
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        pass
    return None


class OnnxBackend:
    """``lcc compile --backend onnx``: ONNX opset 23 + onnxruntime contrib ops, for the CPU or the CUDA provider."""

    name = "onnx"
    # float16: weights, activations, cache and GroupQueryAttention in fp16 (runs on the CPU provider too); the
    # only dtype of a cuda target (lcc.backends.onnx.cuda)
    dtypes = ("float32", "float16")
    dtype_refusals = {"bfloat16": "onnxruntime's CPU provider has no bfloat16 MatMul or Softmax kernels, so a "
                                  "bfloat16 graph could be neither checked nor run here; float16 runs everywhere"}

    def available(self) -> str | None:
        return _WHY

    def default_dtype(self, target) -> str:
        """``--dtype`` when not given, for ``target`` (a ``--target`` string): float16 for cuda, else float32."""
        from lcc.backends.onnx.cuda import default_dtype

        return default_dtype(parse_target(target))

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        """Export ``entries`` (default prefill and decode; with both, the genai model too where the cache allows)
        for ``target`` ("cpu", the default: the CPU provider; "cuda[:arch]": fp16 for the CUDA provider)."""
        from lcc.backends.onnx.cuda import check_dtype as check_target_dtype, kv_quant_refusal
        from lcc.backends.onnx.lower import ENTRIES
        from lcc.errors import UsageError

        where = parse_target(target)
        check_dtype(self, dtype)
        check_target_dtype(where, dtype)
        check_program_dtype(program, dtype)
        refusal = kv_quant_refusal(program.cache)
        if refusal:
            raise UsageError(refusal)
        entries = tuple(entries or ENTRIES)
        if set(ENTRIES) <= set(entries):  # the genai model too, where the cache allows
            manifest = lower(program, out_dir, tokenizer=_tokenizer_for(program), entries=entries, progress=progress,
                             target=str(where))
        else:
            manifest = lower(program, out_dir, genai=False, entries=entries, progress=progress, target=str(where))
        notes = [f"{f['entry']}: {f['node']} ({f['op']}) runs as its {f['how']}" for f in manifest["fallbacks"]]
        genai = manifest["genai"]
        notes.append("onnxruntime-genai: " + (f"{genai['model']} + {genai['config']}" if "model" in genai
                                               else f"no model ({genai['skipped']})"))
        notes.append(f"target {manifest['target']}: providers {', '.join(manifest['providers'])}")
        notes.append(f"versions {manifest['versions']}; optimised {manifest['optimized']}")
        return Lowered(list(manifest["files"]), native=dict(manifest["native"]),
                       fallbacks=sorted({f["op"] for f in manifest["fallbacks"]}), notes=notes,
                       timings=dict(manifest["timings"]))

    def load(self, out_dir, manifest: dict | None = None):
        return OnnxProgram(out_dir)


BACKEND = OnnxBackend()
