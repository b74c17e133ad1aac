"""The ONNX backend: lcc programs exported with ``torch.onnx`` (dynamo), run by onnxruntime.

Importing this package never fails: without ``onnx``/``onnxscript``/``onnxruntime`` it only sets
``AVAILABLE = False`` and ``BACKEND.available()`` says why.  With them, ``lcc.attention`` and
``lcc.rope`` get onnxscript translations registered as their ``onnx`` lowerings
(:mod:`lcc.backends.onnx.register`).

- :func:`lower` ``(program, out_dir, optimize=True, entries=...)``: ``prefill.onnx``, ``decode.onnx``,
  ``weights.bin``, ``onnx.json``, and where the cache is plain an onnxruntime-genai
  ``model.onnx`` + ``genai_config.json``; returns the manifest.
- :class:`OnnxProgram` ``(out_dir)``: load it back with the program's entry-point convention.
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
    """``lcc compile --backend onnx``: ONNX opset 23 + onnxruntime contrib ops, optimised for the CPU provider."""

    name = "onnx"
    # float16: weights, activations, cache and GroupQueryAttention in fp16 (runs on the CPU provider too)
    dtypes = ("float32", "float16")
    dtype_refusals = {"bfloat16": "onnxruntime's CPU provider has no bfloat16 MatMul or Softmax kernels, so a "
                                  "bfloat16 graph could be neither checked nor run here; float16 runs everywhere"}

    def available(self) -> str | None:
        return _WHY

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        """Export ``entries`` (default prefill and decode; with both, the genai model too where the cache allows);
        ``target`` picks the providers ``load`` uses ("cpu", the default: the CPU provider)."""
        from lcc.backends.onnx.lower import ENTRIES

        check_dtype(self, dtype)
        check_program_dtype(program, dtype)
        entries = tuple(entries or ENTRIES)
        if set(ENTRIES) <= set(entries):  # the genai model too, where the cache allows
            manifest = lower(program, out_dir, tokenizer=_tokenizer_for(program), entries=entries, progress=progress)
        else:
            manifest = lower(program, out_dir, genai=False, entries=entries, progress=progress)
        notes = [f"{f['entry']}: {f['node']} ({f['op']}) runs as its {f['how']}" for f in manifest["fallbacks"]]
        genai = manifest["genai"]
        notes.append("onnxruntime-genai: " + (f"{genai['model']} + {genai['config']}" if "model" in genai
                                               else f"no model ({genai['skipped']})"))
        notes.append(f"versions {manifest['versions']}; optimised {manifest['optimized']}")
        return Lowered(list(manifest["files"]), native=dict(manifest["native"]),
                       fallbacks=sorted({f["op"] for f in manifest["fallbacks"]}), notes=notes,
                       timings=dict(manifest["timings"]))

    def load(self, out_dir, manifest: dict | None = None):
        return OnnxProgram(out_dir)


BACKEND = OnnxBackend()
