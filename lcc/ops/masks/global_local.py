"""``global-local:globals=G,window=W,every=E``: a local window of ``W`` plus global tokens.

The first ``G`` tokens and (``E > 0``) every ``E``-th are global: they see and are seen by
everything earlier (Longformer, Beltagy et al. 2020; ETC, Ainslie et al. 2020).
"""

import torch

import sympy

from lcc.ops.masks.kind import MaskKind, causal_pairs, register_mask
from lcc.spec import Field


def global_local_mod(q, kv, globals_, window, every, every_on):
    q_global = (q < globals_) | (((q % every) == 0) & (every_on > 0))
    kv_global = (kv < globals_) | (((kv % every) == 0) & (every_on > 0))
    return (kv <= q) & ((q - kv < window) | kv_global | q_global)


def global_local_rows(p, globals, window, every):
    is_global = (p < globals) | ((p % max(every, 1) == 0) & (every > 0))
    far = p - window  # keys 0..far lie outside the window
    extra = torch.clamp(torch.minimum(far + 1, torch.full_like(p, globals)), min=0)
    if every > 0:
        extra += torch.where(far >= globals, far // every - (globals - 1) // every, 0)
    return torch.where(is_global, p + 1, torch.minimum(p + 1, torch.full_like(p, window)) + extra)


def global_local_pairs(Sq, Sk, globals, window, every):
    """The window, the global keys, and the 1/every rows that are global queries."""
    per_row = window + globals + (2 * (Sk - Sq / 2) / every if every > 0 else 0)
    return sympy.Min(causal_pairs(Sq, Sk), Sq * per_row)


GLOBAL_LOCAL = register_mask(MaskKind(
    "global-local", global_local_mod,
    (Field("globals", int, 4, "first tokens that see and are seen by all", low=0),
     Field("window", int, 4096, "local window, itself included", low=1),
     Field("every", int, 0, "every `every`-th token is global too (0: none)", low=0)),
    doc="causal; local `window` plus global tokens (first `globals`, every `every`-th) (Longformer/ETC)",
    kernel_args=lambda globals, window, every: (globals, window, max(every, 1), int(every > 0)),
    row_counts=global_local_rows, pairs=global_local_pairs, sparse=True))
