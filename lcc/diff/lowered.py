"""The lowered stage of ``lcc diff --backend B``: the program's ``prefill_full`` entry lowered by a backend.

Each backend lowers the same entry the other stages run (all-position logits and every layer's
hidden state), so its stage reports the same columns, first divergent layer included.  The files
go to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import tempfile
from typing import Callable

import torch

from lcc.errors import UsageError

ENTRY = "prefill_full"


def _torch(program, work):
    from lcc.backends.torch_export import export_entry

    return export_entry(program, ENTRY).module()


def _onnx(program, work):
    from lcc.backends.onnx import OnnxProgram, lower

    lower(program, work, genai=False, entries=(ENTRY,))
    return OnnxProgram(work, providers=["CPUExecutionProvider"]).entries[ENTRY]


def _tvm(program, work):
    from lcc.backends.tvm import TvmProgram, lower

    lower(program, work, target="llvm", entries=(ENTRY,))
    return TvmProgram(work, target="llvm").entries[ENTRY]


def _triton(program, work):
    from pathlib import Path

    from torch._inductor import aoti_load_package

    import lcc.backends.triton.ops  # noqa: F401  (ops left opaque in the package call the registered op)
    from lcc.backends.triton.compile import _Entry, compile_entry, default_device

    device = default_device()
    Path(work).mkdir(parents=True, exist_ok=True)
    package = Path(work) / f"{ENTRY}.pt2"
    compile_entry(program, ENTRY, package, device)
    return _Entry(aoti_load_package(str(package)), device)


# backend name -> (program, work dir) -> callable (input_ids, *cache) -> (logits, hidden, *cache)
LOWER_FOR_DIFF: dict[str, Callable] = {"torch": _torch, "onnx": _onnx, "tvm": _tvm, "triton": _triton}


def check_backend(name: str) -> None:
    """Usage error unless ``name`` is a backend ``lcc diff`` can lower to and it is usable here."""
    from lcc.backends import get_backend

    if name not in LOWER_FOR_DIFF:
        raise UsageError(f"--backend {name}: lcc diff lowers to {', '.join(LOWER_FOR_DIFF)}")
    get_backend(name)  # a usage error when the backend cannot run here


def lowered_outputs(name: str, program, ids: torch.Tensor):
    """(logits [S, V], hidden [L+1, S, H]) of ``program`` lowered by backend ``name`` on ``ids``."""
    with tempfile.TemporaryDirectory(prefix=f"lcc-diff-{name}-") as work:
        run = LOWER_FOR_DIFF[name](program, f"{work}/artifact")
        with torch.inference_mode():
            logits, hidden, *_ = run(ids, *program.cache.empty())
        logits, hidden = torch.as_tensor(logits).cpu(), torch.as_tensor(hidden).cpu()
        return logits[0].float().clone(), hidden[:, 0].float().clone()
