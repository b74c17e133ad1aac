"""The lowered stage of ``lcc diff --backend B``: the program's ``prefill_full`` entry lowered by a backend.

Each backend lowers the same entry the other stages run (all-position logits and every layer's
hidden state), so its stage reports the same columns, first divergent layer included.  It goes
through the backend protocol (:mod:`lcc.backends`): ``lower`` into a temporary directory, removed
afterwards, then ``load``; any registered backend can be diffed.
"""

from __future__ import annotations

import tempfile

import torch

from lcc.errors import UsageError

ENTRY = "prefill_full"


def check_backend(name: str, dtype: str = "float32") -> None:
    """Usage error unless ``name`` is a registered backend, usable here, that lowers ``dtype`` programs."""
    from lcc.backends import check_dtype, get_backend, names

    if name not in names():
        raise UsageError(f"--backend {name}: lcc diff lowers to {', '.join(names())}")
    get_backend(name)  # a usage error when the backend cannot run here
    check_dtype(name, dtype)


def lowered_outputs(name: str, program, ids: torch.Tensor):
    """(logits [S, V], hidden [L+1, S, H]) of ``program`` lowered by backend ``name`` on ``ids``."""
    from lcc.backends import get_backend

    backend = get_backend(name)
    with tempfile.TemporaryDirectory(prefix=f"lcc-diff-{name}-") as work:
        backend.lower(program, f"{work}/artifact", entries=(ENTRY,), dtype=program.spec.dtype)
        run = backend.load(f"{work}/artifact").entries[ENTRY]
        with torch.inference_mode():
            logits, hidden, *_ = run(ids, *program.cache.empty())
        logits, hidden = torch.as_tensor(logits).cpu(), torch.as_tensor(hidden).cpu()
        return logits[0].float().clone(), hidden[:, 0].float().clone()
