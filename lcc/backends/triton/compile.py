"""``lcc compile --backend triton``: the lcc ops as triton_ops inside Inductor, saved as AOTInductor packages.

Each entry point (prefill with a symbolic sequence length, decode) is re-exported with its
lcc ops retargeted to their ``lcc_triton`` triton_ops (:mod:`lcc.backends.triton.ops`),
moved to the compile device (CUDA where present, else CPU) and compiled ahead of time with
``torch._inductor.aoti_compile_and_package`` into ``<entry>.pt2``.  Inductor traces into
the triton_ops, so on CUDA the Triton kernels are compiled into the package beside
Inductor's own; on CPU the ops' reference bodies become Inductor C++ (Triton kernels have no
CPU target outside the interpreter).  ``aoti_load_package`` reloads a package with no
compilation.  lcc ops without a triton_op stay opaque calls of the registered op.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lcc.backends import Lowered, check_dtype
from lcc.backends.nodes import native_hows, prepare_nodes
from lcc.backends.torch_export import export_entry
from lcc.capture.program import copy_graph_module

ENTRIES = ("prefill", "decode")


def retarget(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, dict[str, str], list[str]]:
    """A copy of ``gm`` calling the lcc_triton ops: (graph, native {op: how}, ops left as they were)."""
    import lcc.backends.triton.ops  # noqa: F401  (registers the triton lowerings)

    new = copy_graph_module(gm)
    records = prepare_nodes(new, "triton")  # a node without a triton_op stays a call of the lcc op
    return new, native_hows(records), sorted({r["op"] for r in records if r["fallback"]})


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_configs() -> dict:
    """Inductor settings for the packages.

    Inductor types Python-float kernel arguments fp64 (pytorch/pytorch#170289) where Triton types
    them fp32; in our kernels an fp64 ``qk_scale`` promotes the softmax state to fp64 and
    ``tl.dot``'s fp32 accumulator no longer matches (a compile error).  This keeps them fp32.
    """
    from torch._inductor import config

    return {"_use_fp64_for_unbacked_floats": False} if hasattr(config, "_use_fp64_for_unbacked_floats") else {}


def compile_entry(program, name: str, path: Path, device: str, inductor_configs: dict | None = None,
                  seq_len: int | None = None):
    """Export one entry (lcc ops retargeted), move it to ``device`` and AOT-compile it to ``path``.

    Returns (native {op: how}, ops left as opaque calls).  ``seq_len`` fixes prefill's length.
    """
    from torch._inductor import aoti_compile_and_package
    from torch.export.passes import move_to_device_pass

    gm, native, left = retarget(program.entries[name])
    ep = export_entry(program, name, gm, None if name == "decode" else seq_len)
    if device != "cpu":  # with the index: graph asserts compare "cuda" with fake tensors' "cuda:0"
        dev = torch.device(device)
        ep = move_to_device_pass(ep, dev if dev.index is not None else torch.device(dev.type, 0))
    with torch.no_grad():
        configs = {**default_configs(), **(inductor_configs or {})}
        aoti_compile_and_package(ep, package_path=str(path), inductor_configs=configs)
    return native, left


class _Entry:
    """A loaded package called with the program's entry convention.

    Inputs are moved to the package's device; logits come back on the CPU (what callers compare
    and sample from), the cache stays on the device for the next call.
    """

    def __init__(self, runner, device: str):
        self.runner, self.device = runner, torch.device(device)

    def __call__(self, *args):
        outs = self.runner(*[a.to(self.device) for a in args])
        return [outs[0].cpu(), *outs[1:]]


class TritonProgram:
    def __init__(self, out_dir, manifest: dict | None = None):
        from torch._inductor import aoti_load_package

        import lcc.backends.triton.ops  # noqa: F401  (lcc ops left opaque in a package call the registered op)

        from lcc.integrity import backend_manifest, inside

        out_dir = Path(out_dir)
        self.meta = backend_manifest(out_dir, "triton.json")
        device = self.meta.get("device")
        if device == "cuda" and not torch.cuda.is_available():
            from lcc.errors import UsageError

            raise UsageError(f"{out_dir} was compiled for CUDA and this machine has no GPU: "
                             "compile it again here (lcc compile ... --backend triton)")
        files = self.meta.get("entries") or {name: f"{name}.pt2" for name in ENTRIES}
        files = files if isinstance(files, dict) else {name: f"{name}.pt2" for name in files}
        self.runners = {name: aoti_load_package(str(inside(out_dir, f, "triton.json"))) for name, f in files.items()}
        self.entries = {name: _Entry(r, device) for name, r in self.runners.items()}


class TritonBackend:
    """``--backend triton``: AOTInductor packages per entry, for CUDA where present, else the CPU."""

    name = "triton"

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
        """AOT-compile ``entries`` (default prefill and decode) for ``target`` ("cuda" or "cpu"; default:
        the backend's device, else cuda where present)."""
        check_dtype(self.name, dtype)
        device = target or self.device or default_device()
        entries = tuple(entries or ENTRIES)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        native, left, seconds = {}, set(), {}
        for name in entries:
            t0 = time.perf_counter()
            n, l = compile_entry(program, name, out_dir / f"{name}.pt2", device, self.inductor_configs)
            seconds[name] = round(time.perf_counter() - t0, 1)
            native.update(n)
            left.update(l)
            if progress:
                progress(name)
        import triton

        meta = {"device": device, "torch": torch.__version__, "triton": triton.__version__,
                "compile_seconds": seconds, "entries": {name: f"{name}.pt2" for name in entries}}
        (out_dir / "triton.json").write_text(json.dumps(meta, indent=2) + "\n")
        notes = [f"AOTInductor packages for {device} (torch {torch.__version__}, triton {triton.__version__})"]
        if device == "cpu":
            notes.append("on CPU the triton_ops' bodies are the ops' reference implementations, compiled by "
                         "Inductor to C++: Triton kernels have no CPU target outside the interpreter")
        notes += [f"{op} has no triton_op: the package calls the registered lcc op" for op in sorted(left)]
        return Lowered(["triton.json", *[f"{n}.pt2" for n in entries]], native=native, fallbacks=sorted(left),
                       notes=notes, timings={f"compile {name}_s": t for name, t in seconds.items()})

    def load(self, out_dir, manifest: dict | None = None) -> TritonProgram:
        return TritonProgram(out_dir, manifest)

    def native_files(self, out_dir) -> list[str]:
        """The AOTInductor packages ``triton.json`` lists (they hold compiled native code)."""
        from lcc.integrity import backend_manifest, listed

        return listed(backend_manifest(out_dir, "triton.json"), "entries", "triton.json", out_dir)


BACKEND = TritonBackend()

__all__ = ["BACKEND", "TritonBackend", "TritonProgram", "retarget", "compile_entry"]
