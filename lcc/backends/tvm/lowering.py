"""Lower an lcc program with TVM Relax: re-export each entry, import it, build it, save it.

Each entry graph is re-exported with ``torch.export`` (sequence length dynamic for prefill),
imported with ``from_exported_program`` and the lcc ops' ``custom_convert_map`` (ops or nodes
without a TVM lowering are first swapped for their reference implementation, so the export
decomposes them into ATen ops), and all entries go into one IRModule: one library, weights
kept as function inputs and stored once beside it (``weights.safetensors``).  The module is
built for every requested target and exported with ``export_library``, so it reloads without
recompiling.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.fx

from lcc.backends.nodes import prepare_nodes
from lcc.backends.torch_export import export_entry
from lcc.backends.tvm import cuda
from lcc.backends.tvm.register import BACKEND, convert_map
from lcc.capture.program import copy_graph_module
from lcc.ops import registry

MANIFEST = "tvm.json"
WEIGHTS = "weights.safetensors"
ENTRIES = ("prefill", "decode")


def make_target(target: str):
    """A ``tvm.target.Target`` from ``"llvm"`` or CLI-style ``"cuda -arch=sm_90"``.

    TVM 0.27 no longer parses the CLI form (only a kind name or a JSON dict), so the
    ``-key=value`` options become the dict's attributes here; cuda gets an ``llvm`` host.
    """
    import tvm

    kind, *options = target.split()
    config: dict = {"kind": kind}
    for opt in options:
        key, eq, value = opt.lstrip("-").partition("=")
        config[key] = value if eq else True
    if kind == "cuda":
        config.setdefault("host", "llvm")
    return tvm.target.Target(config)


def library_stem(target: str) -> str:
    """``model.llvm``, ``model.cuda-sm_90``: one library per target kind and arch."""
    t = make_target(target)
    arch = t.attrs.get("arch") if t.kind.name == "cuda" else None
    return f"model.{t.kind.name}{'-' + str(arch) if arch else ''}"


def module_key(mod, target: str) -> str:
    """A name part derived from what is built: the module's structure, the target and the TVM version.

    The same inputs give the same name (``lcc.json`` stays byte-identical; the ``.so`` bytes are not), a
    different module a different one: ``dlopen`` hands back an already loaded library for a path it has
    seen, so a rebuilt library under the same name would not be reloaded.
    """
    import tvm

    text = f"{target}|{tvm.__version__}|{mod.script()}"  # the printed IR: stable across processes
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def export_library(executable, out: Path, stem: str, key: str) -> str:
    """Write the library as ``<stem>.<key>.so`` (``key``: :func:`module_key`) and return its name."""
    tmp = out / f"{stem}.partial.so"
    executable.export_library(str(tmp))
    name = f"{stem}.{key}.so"
    os.replace(tmp, out / name)
    return name


# How a node without a TVM lowering is decomposed, tried in this order: the op's reference (the
# oracle, written to be read), then the op's own eager function (when the reference's signature is
# not the schema's); whichever torch.export can trace with a dynamic sequence length is used.
DECOMPOSITIONS = {"reference": registry.reference_call, "eager": registry.eager_body}


def with_fallbacks(gm: torch.fx.GraphModule, how: str = "reference") -> tuple[torch.fx.GraphModule, list[dict]]:
    """A copy of ``gm`` whose lcc op nodes that TVM cannot lower call a decomposition ``how`` instead."""
    gm = copy_graph_module(gm)
    records = prepare_nodes(gm, BACKEND, DECOMPOSITIONS[how], decomposition=how)
    return gm, [{k: r[k] for k in ("op", "node", "why", "as")} for r in records if r["fallback"]]


def _needs_decomposition(ep: torch.export.ExportedProgram, converters: dict) -> bool:
    """True if some ATen op of ``ep`` has no TVM converter as it stands (then decompose to core ATen)."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    known = set(ExportedProgramImporter().convert_map) | set(converters)
    return any(n.op == "call_function" and n.target.__name__ not in known for n in ep.graph.nodes)


def import_entry(ep: torch.export.ExportedProgram, name: str):
    """(Relax function named ``name`` taking user inputs then weights, weight names in order).

    The graph is imported as exported when TVM converts all of its ops (several times faster
    than ``run_decompositions``, which re-traces the whole model); otherwise it is decomposed first.
    """
    from tvm.relax.frontend.torch import from_exported_program

    converters = convert_map()
    mod = from_exported_program(ep, keep_params_as_input=True, custom_convert_map=converters,
                                 run_ep_decomposition=_needs_decomposition(ep, converters))
    func = mod["main"].without_attr("params").with_attr("global_symbol", name)
    kind = torch.export.graph_signature.InputKind.PARAMETER
    weights = [spec.target for spec in ep.graph_signature.input_specs if spec.kind == kind]
    return func, weights


def build(mod, target: str):
    """Compile ``mod`` with TVM's default Relax pipeline for ``target`` (dlight GPU schedules on cuda)."""
    import tvm

    return tvm.compile(mod, target=make_target(target))


def _save_weights(eps: dict, weights: dict, path: Path) -> None:
    """Every entry's weights, each name once, as one safetensors file."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for entry, ep in eps.items():
        for name in weights[entry]:
            if name in tensors:
                continue
            t = ep.state_dict[name].detach().contiguous()
            if t.data_ptr() in seen:  # a tied weight: safetensors refuses shared storage
                t = t.clone()
            seen.add(t.data_ptr())
            tensors[name] = t
    save_file(tensors, str(path))


def _export_with_fallbacks(program, name: str):
    """(exported entry, its fallbacks), trying each decomposition of the ops TVM cannot lower."""
    errors = []
    for how in DECOMPOSITIONS:
        gm, fallbacks = with_fallbacks(program.entries[name], how)
        try:
            return export_entry(program, name, gm), fallbacks
        except Exception as e:  # torch raises many types; only a fallback makes this ours to explain
            if not fallbacks:
                raise
            errors.append(f"as {how}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}")
    nodes = ", ".join(f"{f['node']} ({f['why']})" for f in fallbacks)
    raise NotImplementedError(f"tvm: {name}: {nodes} cannot be lowered natively and no decomposition of "
                              f"them exports with a dynamic sequence length ({'; '.join(errors)})")


def _import_entries(program, entries, step):
    """One IRModule with a Relax function per entry; also each entry's weights and exported program."""
    import tvm

    eps, funcs, weights, fallbacks = {}, {}, {}, []
    for name in entries:
        step(f"export {name}")
        eps[name], fb = _export_with_fallbacks(program, name)
        fallbacks += [{**f, "entry": name} for f in fb]
        step(f"import {name}")
        funcs[name], weights[name] = import_entry(eps[name], name)
    mod = tvm.IRModule({tvm.ir.GlobalVar(name): f for name, f in funcs.items()})
    return mod, eps, weights, fallbacks


def _build_targets(mod, targets, out: Path, step, timings: dict, notes: list):
    """Build and export ``mod`` for each target (plus nvcc fatbins for cuda); (libraries, kernels)."""
    libraries, kernels = {}, {}
    for tgt in targets:
        step(f"build {tgt}")
        t0 = time.perf_counter()
        stem = library_stem(tgt)
        executable = build(mod, tgt)
        libraries[tgt] = export_library(executable, out, stem, module_key(mod, tgt))
        timings[f"build {tgt}_s"] = round(time.perf_counter() - t0, 2)
        if make_target(tgt).kind.name == "cuda":
            step(f"nvcc {tgt}")
            t0 = time.perf_counter()
            kernels[tgt] = cuda.precompile(executable, make_target(tgt), out, stem)
            timings[f"nvcc {tgt}_s"] = round(time.perf_counter() - t0, 2)
            notes.append(f"{tgt}: {len(kernels[tgt])} CUDA module(s) compiled by nvcc ({cuda.nvcc_version()})")
    return libraries, kernels


def _remove_previous(out: Path) -> None:
    """Delete the libraries and fatbins an earlier lowering listed in ``out``'s manifest."""
    old = out / MANIFEST
    if not old.is_file():
        return
    manifest = json.loads(old.read_text())
    files = list(manifest.get("libraries", {}).values())
    files += [k["file"] for ks in manifest.get("cuda_kernels", {}).values() for k in ks]
    for name in files:
        (out / name).unlink(missing_ok=True)


def lower(program, out_dir, target: str | Sequence[str] = "llvm", entries: Sequence[str] = ENTRIES,
          progress: Callable[[str], None] | None = None) -> dict:
    """Lower ``program``'s ``entries`` into ``out_dir`` for each target; returns the manifest written.

    The manifest (``tvm.json``) holds per entry its weight order, the library per target, the cache
    layout, the ops lowered natively and the nodes that fell back to their reference, and timings.
    """
    import tvm

    step = progress or (lambda _: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    t0 = time.perf_counter()
    mod, eps, weights, fallbacks = _import_entries(program, entries, step)
    timings, notes = {"export_import_s": round(time.perf_counter() - t0, 2)}, []
    _save_weights(eps, weights, out / WEIGHTS)
    targets = [target] if isinstance(target, str) else list(target)
    libraries, kernels = _build_targets(mod, targets, out, step, timings, notes)
    native = {name: opdef.lowerings[BACKEND].how for name, opdef in registry.ops().items()
              if BACKEND in opdef.lowerings}
    manifest = {
        "tvm_version": tvm.__version__,
        "entries": {name: {"weights": weights[name]} for name in entries},
        "libraries": libraries,
        "cuda_kernels": kernels,
        "weights": WEIGHTS,
        "cache": program.cache.to_dict(),
        "native": native,
        "fallbacks": fallbacks,
        "timings": timings,
        "notes": notes,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
