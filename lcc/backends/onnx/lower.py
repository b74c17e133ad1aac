"""Lower an lcc program to ONNX: ``prefill.onnx``, ``decode.onnx``, shared ``weights.bin``, ``onnx.json``.

Steps: export each entry with the lcc ops' translations (:mod:`.export`); where the cache
layout is onnxruntime-genai's, compose its ``model.onnx`` from the two (:mod:`.genai`);
apply onnxruntime's graph optimisations and save the optimised graphs (:mod:`.optimize`; for a
cpu target only: a cuda session optimises at load, :mod:`.cuda`); store each distinct weight once
(:mod:`.weights`).  Everything is written to a temporary directory beside ``out_dir`` and renamed
into place, so ``out_dir`` never holds a half artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from lcc.backends.nodes import native_hows
from lcc.backends.onnx import cuda
from lcc.backends.onnx import genai as genai_model
from lcc.backends.onnx.attention import IN_PLACE
from lcc.backends.onnx.export import OPSET, export_entry, io_names
from lcc.backends.onnx.optimize import optimize_model
from lcc.backends.onnx.weights import WEIGHTS, share_weights

MANIFEST = "onnx.json"
ENTRIES = ("prefill", "decode")


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnxruntime_genai

        out["onnxruntime_genai"] = onnxruntime_genai.__version__
    except ImportError:
        pass
    return out


def _install(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``: a rename; an existing ``out`` is swapped out, then removed."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _save_raw(model, path: Path) -> None:
    import onnx_ir as ir

    ir.save(model, path, external_data=path.name + ".data", size_threshold_bytes=1024)


def lower(program, out_dir, optimize: bool = True, genai: bool | None = None, tokenizer=None,
          entries: Sequence[str] = ENTRIES, progress: Callable[[str], None] | None = None,
          target: str = "cpu") -> dict:
    """Write the ONNX artifact of ``program`` to ``out_dir``; returns its manifest (also ``onnx.json``).

    ``optimize``: save onnxruntime's ``ORT_ENABLE_EXTENDED`` graphs (else the exported ones).
    ``genai``: also write onnxruntime-genai's ``model.onnx`` + ``genai_config.json`` (default:
    when the cache layout allows); ``tokenizer`` supplies its token ids and tokenizer files.
    ``target`` (``cpu``, ``cuda[:arch]``): recorded, and picks the providers and the offline optimisation.
    """
    from lcc.target import parse_target

    where = parse_target(target)
    optimize = optimize and cuda.optimize_offline(where)
    step = progress or (lambda _: None)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would become the artifact's mode
    try:
        manifest = _lower_into(program, tmp, optimize, genai, tokenizer, entries, step, where)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _lower_into(program, tmp: Path, optimize, genai, tokenizer, entries, step, where) -> dict:
    layout = program.cache
    raw = tmp / "raw"
    raw.mkdir()
    timings, nodes = {}, {}
    for name in entries:
        step(f"export {name}")
        t0 = time.perf_counter()
        nodes[name] = _export_one(program, name, raw)
        timings[f"export {name}_s"] = round(time.perf_counter() - t0, 2)
    files = {name: f"{name}.onnx" for name in entries}
    why_not_genai = genai_model.unsupported(layout) if set(ENTRIES) <= set(entries) else "needs prefill and decode"
    if genai is False:
        why_not_genai = "not requested"
    elif genai and why_not_genai:
        raise ValueError(f"no onnxruntime-genai model: {why_not_genai}")
    if why_not_genai is None:
        step("compose genai model")
        genai_model.compose(raw / "prefill.onnx", raw / "decode.onnx", raw / genai_model.MODEL, layout.layers)
        files["genai"] = genai_model.MODEL
    for key, file in files.items():
        t0 = time.perf_counter()
        if optimize:
            step(f"optimize {key}")
            optimize_model(raw / file, tmp / file)
        else:
            _copy_model(raw / file, tmp / file)
        timings[f"optimize {key}_s"] = round(time.perf_counter() - t0, 2)
    step("weights")
    weights = share_weights([tmp / f for f in files.values()], tmp)
    shutil.rmtree(raw)
    genai_info = {"skipped": why_not_genai}
    if why_not_genai is None:
        ids = genai_model.token_ids(tokenizer) or program.meta.get("token_ids", {})
        genai_model.write_config(tmp, program, ids, where)
        genai_info = {"model": genai_model.MODEL, "config": genai_model.CONFIG,
                      "eos_token_id": ids.get("eos_token_id")}
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    manifest = _manifest(program, files, nodes, weights, genai_info, optimize, timings, where)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _export_one(program, name: str, raw: Path) -> list[dict]:
    model, nodes = export_entry(program, name)
    _save_raw(model, raw / f"{name}.onnx")
    return nodes


def _copy_model(src: Path, dst: Path) -> None:
    import onnx

    onnx.save_model(onnx.load(str(src)), str(dst), save_as_external_data=True, location=dst.name + ".data",
                    size_threshold=1024)


def _manifest(program, files, nodes, weights, genai_info, optimize, timings, where) -> dict:
    layout = program.cache
    entries = {}
    for name in nodes:
        inputs, outputs = io_names(name, layout)
        attention = [n for n in nodes[name] if n["op"] == "attention"]
        in_place = (not layout.tensors and len(attention) == layout.layers
                    and all(n["how"].startswith(IN_PLACE) for n in attention))
        entries[name] = {"file": files[name], "inputs": inputs, "outputs": outputs, "cache_in_place": in_place}
    fallbacks = [{**n, "entry": e} for e, ns in nodes.items() for n in ns if n["fallback"]]
    return {
        "versions": _versions(),
        "target": str(where),
        "providers": cuda.providers(where),
        "opset": OPSET,
        "entries": entries,
        "weights": WEIGHTS,
        "weights_bytes": weights,
        "cache": layout.to_dict(),
        "optimized": ("ORT_ENABLE_EXTENDED (CPU provider)" if optimize else
                      "at load, by the CUDA provider's session" if where.is_cuda else None),
        "native": native_hows([n for ns in nodes.values() for n in ns]),
        "nodes": {e: [{k: v for k, v in n.items()} for n in ns] for e, ns in nodes.items()},
        "fallbacks": fallbacks,
        "genai": genai_info,
        "files": sorted([*files.values(), WEIGHTS, MANIFEST] + ([genai_model.CONFIG] if "model" in genai_info else [])),
        "timings": timings,
    }
