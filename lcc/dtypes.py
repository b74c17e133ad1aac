"""Compute and cache dtypes as the command line spells them (``--dtype``, ``--kv-cache-dtype``).

One spelling table for every command: ``fp32`` / ``float32``, ``fp16`` / ``float16`` / ``half``,
``bf16`` / ``bfloat16``; lcc stores the torch name (``float32``, ``float16``, ``bfloat16``) in
manifests, cache keys and reports.
"""

from __future__ import annotations

import torch

from lcc.errors import UsageError

DTYPES = ("float32", "float16", "bfloat16")
_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def parse_dtype(text: str | None, flag: str = "--dtype") -> str | None:
    """The torch name of ``text`` (None stays None); a usage error naming the choices otherwise."""
    if text is None:
        return None
    name = _ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in DTYPES:
        raise UsageError(f"{flag} {text}: unknown dtype; give fp32, fp16 or bf16 (float32, float16 or bfloat16)")
    return name


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)
