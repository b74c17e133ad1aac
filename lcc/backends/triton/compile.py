"""``lcc compile --backend triton``: the lcc ops as triton_ops inside Inductor, saved as AOTInductor packages.

Each entry point (prefill with a symbolic sequence length, decode) is re-exported with its
lcc ops retargeted to their ``lcc_triton`` triton_ops (:mod:`lcc.backends.triton.ops`),
moved to the target's device (:func:`compile_device`) and compiled ahead of time with
``torch._inductor.aoti_compile_and_package`` into ``<entry>.pt2``.  Inductor traces into
the triton_ops, so on CUDA the Triton kernels are compiled into the package beside
Inductor's own; on CPU the ops' reference bodies become Inductor C++ (Triton kernels have no
CPU target outside the interpreter).  lcc ops without a triton_op stay opaque calls of the
registered op.  A cuda target compiles for the GPU it is compiled on (Inductor builds its kernels
for the device it finds), so it needs a GPU of the target's arch.  The packages hold code only
(``aot_inductor.package_constants_in_so=False``): the weights of every entry are stored once, in
``weights.safetensors``, and handed to each loaded package by constant name (``load_constants``, the
loader keeping pointers to the same tensors), so nothing is compiled or unpickled at load.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lcc.backends import Lowered, check_dtype, check_program_dtype
from lcc.backends.nodes import native_hows, prepare_nodes
from lcc.backends.torch_export import WeightWriter, export_entry, load_weights
from lcc.capture.program import copy_graph_module
from lcc.errors import UsageError

ENTRIES = ("prefill", "decode")
WEIGHTS = "weights.safetensors"
MANIFEST = "triton.json"


def retarget(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, dict[str, str], list[str]]:
    """A copy of ``gm`` calling the lcc_triton ops: (graph, native {op: how}, ops left as they were)."""
    import lcc.backends.triton.ops  # noqa: F401  (registers the triton lowerings)

    new = copy_graph_module(gm)
    records = prepare_nodes(new, "triton")  # a node without a triton_op stays a call of the lcc op
    return new, native_hows(records), sorted({r["op"] for r in records if r["fallback"]})


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compile_device(target: str | None, default: str | None = None) -> tuple[str, str]:
    """(compile device, recorded target) for an lcc ``--target`` (None: ``default``, else the local device).

    A cuda target is a usage error without a GPU here, or when this GPU's arch is not the target's."""
    from lcc.target import local_arch, parse_target

    if target is None:
        device = default or default_device()
        return device, f"cuda:{local_arch()}" if device == "cuda" else "cpu"
    where = parse_target(target)
    if not where.is_cuda:
        return "cpu", "cpu"
    arch = local_arch()
    if arch is None:
        raise UsageError(f"--target {where} with --backend triton: AOTInductor compiles the packages for the GPU it "
                         "finds, and this machine has none; compile on the GPU machine, or use --target cpu (the "
                         "onnx and tvm backends lower for cuda without a GPU)")
    if where.arch is not None and where.arch != arch:
        raise UsageError(f"--target {where} with --backend triton: AOTInductor compiles for this GPU ({arch}); "
                         f"compile on an {where.arch} GPU, or give --target cuda:{arch}")
    return "cuda", f"cuda:{arch}"


def default_configs() -> dict:
    """Inductor settings for the packages.

    Inductor types Python-float kernel arguments fp64 (pytorch/pytorch#170289) where Triton types
    them fp32; in our kernels an fp64 ``qk_scale`` promotes the softmax state to fp64 and
    ``tl.dot``'s fp32 accumulator no longer matches (a compile error).  This keeps them fp32.
    """
    from torch._inductor import config

    return {"_use_fp64_for_unbacked_floats": False} if hasattr(config, "_use_fp64_for_unbacked_floats") else {}


def compile_entry(program, name: str, path: Path, device: str, inductor_configs: dict | None = None,
                  seq_len: int | None = None, weights: WeightWriter | None = None):
    """Export one entry (lcc ops retargeted), move it to ``device`` and AOT-compile it to ``path``.

    Returns (native {op: how}, ops left as opaque calls).  ``seq_len`` fixes prefill's length.  With
    ``weights``, the package is compiled without its constants and they are added to ``weights`` instead.
    """
    from torch._inductor import aoti_compile_and_package
    from torch.export.passes import move_to_device_pass

    gm, native, left = retarget(program.entries[name])
    ep = export_entry(program, name, gm, None if name == "decode" else seq_len)
    tensors = {**ep.state_dict, **ep.constants}  # on the CPU, before the move: tied weights still share storage
    if device != "cpu":  # with the index: graph asserts compare "cuda" with fake tensors' "cuda:0"
        dev = torch.device(device)
        ep = move_to_device_pass(ep, dev if dev.index is not None else torch.device(dev.type, 0))
    configs = {**default_configs(), **(inductor_configs or {})}
    if weights is not None:
        configs["aot_inductor.package_constants_in_so"] = False
    with torch.no_grad():
        aoti_compile_and_package(ep, package_path=str(path), inductor_configs=configs)
    if weights is not None:
        for fqn in package_loader(path).get_constant_fqns():
            if fqn not in tensors or not tensors[fqn].is_contiguous():
                raise RuntimeError(f"{path.name} expects a constant {fqn} that is not a contiguous tensor of the "
                                   "exported program: it cannot be stored beside the package")
            weights.add(fqn, tensors[fqn])
    return native, left


def package_loader(path: Path):
    """torch's C++ loader of one AOTInductor package (model ``model``), nothing read through pickle.

    ``torch._inductor.aoti_load_package`` goes through ``load_pt2``, which also deserialises any exported
    programs and pickled weights an archive holds; the packages written here hold neither, so the C++
    loader alone is what a load needs.
    """
    return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)


class _Entry:
    """A loaded package called with the program's entry convention.

    Inputs are moved to the package's device; logits come back on the CPU (what callers compare
    and sample from), the cache stays on the device for the next call.
    """

    def __init__(self, loader, device: str):
        self.loader, self.device = loader, torch.device(device)

    def __call__(self, *args):
        outs = self.loader.boxed_run([a.to(self.device) for a in args])
        return [outs[0].cpu(), *outs[1:]]


def _on_device(tensors: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """``tensors`` moved to ``device``, names that share a tensor (tied weights) still sharing one copy."""
    if device == "cpu":
        return tensors
    moved: dict[int, torch.Tensor] = {}
    return {name: moved.setdefault(id(t), t.to(device)) for name, t in tensors.items()}


def check_constants(tensors: dict[str, torch.Tensor], expected: dict, where: Path) -> None:
    """Usage error unless every constant ``triton.json`` records is in ``tensors`` with its dtype and shape.

    The packages read their constants through raw pointers, so a weights file that does not match them is
    refused before any package sees it.
    """
    for fqn, spec in expected.items():
        t = tensors.get(fqn)
        if t is None or [str(t.dtype).removeprefix("torch."), list(t.shape)] != spec or not t.is_contiguous():
            found = "missing" if t is None else f"{t.dtype} {list(t.shape)}"
            raise UsageError(f"{where}: {fqn} should be {' '.join(map(str, spec))}, found {found}; "
                             "recompile the artifact")


class TritonProgram:
    def __init__(self, out_dir, manifest: dict | None = None):
        import lcc.backends.triton.ops  # noqa: F401  (lcc ops left opaque in a package call the registered op)

        from lcc.integrity import backend_manifest, inside

        out_dir = Path(out_dir)
        self.meta = backend_manifest(out_dir, MANIFEST)
        device = self.meta.get("device")
        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"{out_dir} was compiled for CUDA and this machine has no GPU: "
                             "compile it again here (lcc compile ... --backend triton)")
        files, expected = self.meta.get("entries"), self.meta.get("constants")
        if not isinstance(files, dict) or not isinstance(expected, dict) or "weights" not in self.meta:
            raise UsageError(f"{out_dir / MANIFEST} does not list entries, constants and weights: it was written "
                             "by another lcc version; recompile it with `lcc compile`")
        weights = inside(out_dir, self.meta["weights"], MANIFEST)
        tensors = load_weights(weights)
        check_constants(tensors, expected, weights)
        self.constants = _on_device({fqn: tensors[fqn] for fqn in expected}, device)  # the packages point into these
        self.entries = {}
        for name, f in files.items():
            loader = package_loader(inside(out_dir, f, MANIFEST))
            fqns = loader.get_constant_fqns()
            unknown = sorted(set(fqns) - set(self.constants))
            if unknown:
                raise UsageError(f"{out_dir / f} needs constants {MANIFEST} does not record ({unknown[0]}, ...); "
                                 "recompile the artifact")
            loader.load_constants({fqn: self.constants[fqn] for fqn in fqns}, False, True, True, False)
            self.entries[name] = _Entry(loader, device)


class TritonBackend:
    """``--backend triton``: AOTInductor packages per entry, for CUDA where present, else the CPU."""

    name = "triton"
    dtypes = ("float32", "float16", "bfloat16")  # Inductor's C++ and Triton code both take each

    def __init__(self, device: str | None = None, inductor_configs: dict | None = None):
        self.device, self.inductor_configs = device, inductor_configs

    def available(self) -> str | None:
        from lcc.backends.triton import AVAILABLE

        if not AVAILABLE:
            return "triton is not installed: pip install triton"
        if not hasattr(torch.library, "triton_op"):
            return f"torch {torch.__version__} has no torch.library.triton_op: install torch >= 2.6"
        return None

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        """AOT-compile ``entries`` (default prefill and decode) for ``target`` (an lcc target,
        :func:`compile_device`; default: the backend's device, else cuda where present); their weights go
        once into ``weights.safetensors``."""
        device, where = compile_device(target, self.device)
        check_dtype(self, dtype)
        check_program_dtype(program, dtype)
        entries = tuple(entries or ENTRIES)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        native, left, seconds, weights = {}, set(), {}, WeightWriter()
        for name in entries:
            t0 = time.perf_counter()
            n, l = compile_entry(program, name, out_dir / f"{name}.pt2", device, self.inductor_configs,
                                 weights=weights)
            seconds[name] = round(time.perf_counter() - t0, 1)
            native.update(n)
            left.update(l)
            if progress:
                progress(name)
        weights.save(out_dir / WEIGHTS)
        import triton

        stored = {**weights.tensors, **{a: weights.tensors[t] for a, t in weights.aliases.items()}}
        meta = {"device": device, "target": where, "dtype": dtype, "torch": torch.__version__,
                "triton": triton.__version__, "compile_seconds": seconds,
                "entries": {name: f"{name}.pt2" for name in entries},
                "weights": WEIGHTS,
                "constants": {fqn: [str(t.dtype).removeprefix("torch."), list(t.shape)]
                              for fqn, t in sorted(stored.items())}}
        (out_dir / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
        notes = [f"AOTInductor packages for {where} (torch {torch.__version__}, triton {triton.__version__}), "
                 f"{dtype}, weights stored once in {WEIGHTS}"]
        if device == "cpu":
            notes.append("on CPU the triton_ops' bodies are the ops' reference implementations, compiled by "
                         "Inductor to C++: Triton kernels have no CPU target outside the interpreter")
        notes += [f"{op} has no triton_op: the package calls the registered lcc op" for op in sorted(left)]
        return Lowered([MANIFEST, WEIGHTS, *[f"{n}.pt2" for n in entries]], native=native, fallbacks=sorted(left),
                       notes=notes, timings={f"compile {name}_s": t for name, t in seconds.items()})

    def load(self, out_dir, manifest: dict | None = None) -> TritonProgram:
        return TritonProgram(out_dir, manifest)

    def native_files(self, out_dir) -> list[str]:
        """The AOTInductor packages ``triton.json`` lists (they hold compiled native code)."""
        from lcc.integrity import backend_manifest, listed

        return listed(backend_manifest(out_dir, MANIFEST), "entries", MANIFEST, out_dir)


BACKEND = TritonBackend()

__all__ = ["BACKEND", "TritonBackend", "TritonProgram", "retarget", "compile_entry"]
