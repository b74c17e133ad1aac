"""Which models lcc accepts: capability, not a list of families.

A causal LM is accepted whatever its ``model_type`` when capture can take it over: its attention
goes through transformers' ``AttentionInterface`` (the model class says so with
``_supports_attention_backend``) and its rotary embedding is one capture recognises (a module
holding ``inv_freq`` and ``attention_scaling``, or one such pair per layer type as Gemma 3's),
applied by its modeling module's ``apply_rotary_pos_emb``.  These are checked here before any
work; capture then checks that every layer really went through both (a layer whose attention
bypasses the interface is named), canonicalization proves the op form and ``lcc diff`` parity
with HF eager.  A refusal is one line naming what was not recognised.
"""

from __future__ import annotations

import sys

from lcc.errors import UsageError


def rotary_modules(model) -> list:
    """The rotary-embedding modules of ``model`` that capture takes over (see :func:`rotary_tables`)."""
    return [m for m in model.modules() if rotary_tables(m)]


def rotary_tables(module) -> dict:
    """``{layer type or None: (inv_freq, attention_scaling)}`` of a recognised rotary module, else ``{}``.

    One table (key None) for a module with ``inv_freq`` and ``attention_scaling``; one per layer type
    for a module with ``layer_types`` and ``<type>_inv_freq`` / ``<type>_attention_scaling`` (Gemma 3)."""
    if hasattr(module, "inv_freq") and hasattr(module, "attention_scaling"):
        return {None: (module.inv_freq, module.attention_scaling)}
    types = getattr(module, "layer_types", None)
    if isinstance(types, (list, tuple)) and types and all(
            hasattr(module, f"{t}_inv_freq") and hasattr(module, f"{t}_attention_scaling") for t in types):
        return {t: (getattr(module, f"{t}_inv_freq"), getattr(module, f"{t}_attention_scaling")) for t in types}
    return {}


def modeling_modules(model) -> list:
    """The transformers modeling modules of ``model`` that define ``apply_rotary_pos_emb`` (capture swaps it)."""
    names = {type(m).__module__ for m in model.modules()}
    return [sys.modules[n] for n in sorted(names) if n.startswith("transformers.models.")
            and hasattr(sys.modules[n], "apply_rotary_pos_emb")]


def causal_lm_class(config):
    """transformers' causal-LM class for ``config`` (None when it has none)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def check_config(config, where: str) -> None:
    """Refuse, before any weights are read, a config whose model cannot be captured: one line, what is missing."""
    cls = causal_lm_class(config)
    if cls is None:
        raise UsageError(f"{where}: model_type {config.model_type!r} has no causal-LM class in transformers: "
                         "lcc compiles causal language models")
    if not getattr(cls, "_supports_attention_backend", False):
        raise UsageError(f"{where}: {config.model_type} is not supported: its attention ({cls.__name__}) does not go "
                         "through transformers' AttentionInterface, which lcc capture needs")


def check_model(model, where: str) -> None:
    """Refuse a built model whose rotary embedding capture does not recognise: one line, what is missing."""
    check_config(model.config, where)
    model_type = model.config.model_type
    if not rotary_modules(model):
        raise UsageError(f"{where}: {model_type} is not supported: no rotary embedding lcc recognises (a module with "
                         "inv_freq and attention_scaling, or one pair per layer type)")
    if not modeling_modules(model):
        raise UsageError(f"{where}: {model_type} is not supported: its modeling code has no apply_rotary_pos_emb "
                         "for capture to route through lcc.rope")


__all__ = ["rotary_modules", "rotary_tables", "modeling_modules", "causal_lm_class", "check_config", "check_model"]
