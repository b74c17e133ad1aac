"""onnxruntime graph optimisations, applied once at compile time and saved.

The model is loaded once with ``ORT_ENABLE_EXTENDED`` (constant folding, redundant-node
elimination, and the fusions onnxruntime applies to transformer graphs: FusedMatMul,
QuickGelu, SkipSimplifiedLayerNormalization, ...) and ``optimized_model_filepath``
writes the result with its weights as external data.  The saved graph is computed for the
CPU provider, so only a cpu target's graphs are saved this way (:mod:`.cuda` says why).
"""

from __future__ import annotations

from pathlib import Path

LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def optimize_model(src: Path, dst: Path, level: str = "extended") -> None:
    """Write onnxruntime's optimised form of ``src`` to ``dst`` (+ ``dst.name``.data)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", Path(dst).name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
