"""RoPE scaling read from GGUF metadata (llama.cpp's ``{arch}.rope.scaling.*`` keys) as transformers' ``rope_parameters``.

transformers' GGUF loader maps ``rope.freq_base`` to ``rope_theta`` but drops the scaling keys
for every architecture but gpt-oss, so a scaled GGUF would load unscaled.  llama.cpp's
``convert_hf_to_gguf.py`` writes an HF ``rope_scaling`` as: ``type`` (linear, yarn), ``factor``,
``original_context_length`` (HF ``original_max_position_embeddings``), ``attn_factor`` (HF
``attention_factor``), ``yarn_beta_fast`` / ``yarn_beta_slow`` and ``yarn_log_multiplier``
(0.1 x HF ``mscale_all_dim``); :func:`rope_parameters_from_gguf` inverts that.  Llama 3.1's
scaling travels as a ``rope_freqs`` tensor of per-frequency divisors, not as keys: such a file
is refused rather than run unscaled.
"""

from __future__ import annotations

from lcc.errors import UsageError

SCALING_TYPES = ("none", "linear", "yarn")
_YARN_KEYS = {"attn_factor": "attention_factor", "yarn_beta_fast": "beta_fast", "yarn_beta_slow": "beta_slow"}


def gguf_metadata(reader, prefix: str) -> dict:
    """The scalar metadata fields of a ``gguf.GGUFReader`` under ``prefix``, by key without the prefix."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith(prefix) and len(field.types) == 1:
            out[key[len(prefix):]] = field.contents()
    return out


def rope_parameters_from_gguf(reader, arch: str, rope_theta: float, where: str) -> dict | None:
    """transformers ``rope_parameters`` for the scaling ``reader``'s metadata carries; None when it has none."""
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise UsageError(f"{where} carries per-frequency RoPE factors (tensor rope_freqs.weight, as Llama 3.1 GGUFs "
                         "do), which lcc cannot map to rope_parameters: load the model's HF directory instead")
    keys = gguf_metadata(reader, f"{arch}.rope.scaling.")
    kind = keys.get("type", "none")
    if kind not in SCALING_TYPES:
        raise UsageError(f"{where}: {arch}.rope.scaling.type={kind!r} is not supported; "
                         f"supported: {', '.join(SCALING_TYPES)}")
    if kind == "none":
        return None
    factor = float(keys.get("factor", 0.0))
    if not factor > 0:
        raise UsageError(f"{where}: {arch}.rope.scaling.type={kind} needs a positive {arch}.rope.scaling.factor")
    params = {"rope_type": kind, "rope_theta": float(rope_theta), "factor": factor}
    if keys.get("original_context_length"):
        params["original_max_position_embeddings"] = int(keys["original_context_length"])
    if kind == "yarn":
        params.update({hf: float(keys[k]) for k, hf in _YARN_KEYS.items() if keys.get(k)})
        if keys.get("yarn_log_multiplier"):
            params["mscale_all_dim"] = float(keys["yarn_log_multiplier"]) / 0.1
    return params
