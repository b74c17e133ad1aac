"""Kept (query, key) pairs of a mask, for the cost model, read from the mask kind's record."""

from __future__ import annotations

import sympy
import torch

from lcc.ops.masks.kind import MaskSpec, causal_pairs


def mask_pairs(mask: str | MaskSpec, Sq, Sk):
    """Pairs a mask keeps, queries aligned to the end of the keys (sympy).

    Exact (an Integer) for numeric lengths when the kind counts its rows; otherwise the kind's
    own ``pairs`` expression; a kind with neither is costed as its bound (causal, or all pairs).
    """
    spec = MaskSpec.parse(mask) if isinstance(mask, str) else mask
    kind = spec.record
    Sq, Sk = sympy.sympify(Sq), sympy.sympify(Sk)
    if kind.row_counts is not None and Sq.is_number and Sk.is_number:
        p = torch.arange(int(Sk) - int(Sq), int(Sk), dtype=torch.int64)
        return sympy.Integer(int(kind.row_counts(p, **spec.args).sum()))
    if kind.pairs is not None:
        return kind.pairs(Sq, Sk, **spec.args)
    return causal_pairs(Sq, Sk) if kind.causal else Sq * Sk
