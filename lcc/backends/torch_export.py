"""The ``torch`` backend: entry points serialised with ``torch.export.save`` (.pt2), run by PyTorch.

lcc ops run through their registered implementations (CPU reference paths, or
kernels a GPU backend registered), so this backend is the baseline every other
one is compared with.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import Dim

from lcc.backends import Lowered


def export_entry(program, name: str):
    """Re-export one entry graph (sequence length dynamic for prefill entries)."""
    gm = program.entries[name]
    cache = program.cache.empty()
    if name == "decode":
        args = (torch.zeros(program.cache.batch, 1, dtype=torch.long), torch.tensor(0), *cache)
        shapes = None
    else:
        seq = Dim("seq", min=2, max=program.cache.capacity)
        args = (torch.zeros(program.cache.batch, min(8, program.cache.capacity), dtype=torch.long), *cache)
        shapes = ({1: seq}, *[None] * len(cache))
    with torch.no_grad():
        return torch.export.export(gm, args, dynamic_shapes=shapes, strict=False)


class _Loaded:
    def __init__(self, entries):
        self.entries = entries


class TorchBackend:
    name = "torch"

    def available(self):
        return None

    def lower(self, program, out_dir, progress=None) -> Lowered:
        files = []
        for name in ("prefill", "decode"):
            ep = export_entry(program, name)
            torch.export.save(ep, Path(out_dir) / f"{name}.pt2")
            files.append(f"{name}.pt2")
            if progress:
                progress(name)
        return Lowered(files, native={"attention": "lcc op (registered implementation)",
                                      "rope": "lcc op (registered implementation)"})

    def load(self, out_dir, manifest):
        import lcc.ops  # noqa: F401  (the saved programs call torch.ops.lcc.*)

        return _Loaded({name: torch.export.load(Path(out_dir) / f"{name}.pt2").module()
                        for name in ("prefill", "decode")})


BACKEND = TorchBackend()
