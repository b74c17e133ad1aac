"""``ModelSpec``: what the rest of lcc needs to know about a loaded model, read from its HF config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

# lcc family name -> transformers model_type, for the families with a ``tiny-<family>`` preset (the regression
# suite).  Any other model_type whose attention and rotary embedding capture recognises is accepted too
# (:func:`lcc.models.support.check_capturable`), under its model_type as family.
FAMILIES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gpt-neox": "gpt_neox",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "olmo2": "olmo2",
    "granite": "granite",
}
MODEL_TYPE_TO_FAMILY = {v: k for k, v in FAMILIES.items()}


def family_of(model_type: str) -> str:
    """The lcc family name of a transformers ``model_type`` (the model_type itself outside :data:`FAMILIES`)."""
    return MODEL_TYPE_TO_FAMILY.get(model_type, model_type)


@dataclass(frozen=True)
class RotarySpec:
    """One layer's RoPE: base, rotated channels, and the scaling its checkpoint ships (``{}``: plain)."""

    theta: float
    rotary_dim: int
    scaling: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """Family, shape, attention kinds per layer, rotary config, trained length, dtype, size."""

    model_id: str
    family: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    attention: tuple[str, ...]  # per layer: "full" or "sliding:W"
    rotary: RotarySpec  # the full-attention layers' (every layer's when they all share one)
    trained_len: int  # the config's max_position_embeddings: what the model was trained or extended to
    dtype: str
    params: int
    rotary_layers: tuple[RotarySpec, ...] = ()  # per layer where they differ (Gemma 3); () when all are ``rotary``

    def rotary_of(self, layer: int) -> RotarySpec:
        """Layer ``layer``'s rotary spec."""
        return self.rotary_layers[layer] if self.rotary_layers else self.rotary

    def rotary_kinds(self) -> dict[str, RotarySpec]:
        """``{layer kind: rotary spec}`` per attention kind ("full", "sliding:W"), in layer order."""
        out: dict[str, RotarySpec] = {}
        for i, kind in enumerate(self.attention):
            out.setdefault(kind, self.rotary_of(i))
        return out

    def kv_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """K and V of every layer for one token, at the cache dtype (the model's by default)."""
        itemsize = (dtype or getattr(torch, self.dtype)).itemsize
        return 2 * self.layers * self.kv_heads * self.head_dim * itemsize

    def sliding_window(self, layer: int) -> int | None:
        kind = self.attention[layer]
        return int(kind.split(":")[1]) if kind.startswith("sliding:") else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention"] = list(self.attention)
        del d["rotary_layers"]  # shown per layer kind: a layer's kind says which
        d["rotary_by_kind"] = {kind: asdict(r) for kind, r in self.rotary_kinds().items()}
        d["kv_bytes_per_token"] = self.kv_bytes_per_token()
        d["kv_bytes_at_trained_len"] = self.kv_bytes_per_token() * self.trained_len
        return d


def _layer_attention(config) -> tuple[str, ...]:
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return tuple(f"sliding:{window}" if t == "sliding_attention" and window else "full" for t in layer_types)
    if window and config.model_type in ("mistral", "phi3"):
        return tuple(f"sliding:{window}" for _ in range(n))
    return tuple("full" for _ in range(n))


def layer_rope_parameters(config) -> list[dict]:
    """Each layer's transformers ``rope_parameters`` (Gemma 3 keys them by layer type: local and global)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and rope and all(isinstance(v, dict) for v in rope.values()):
        return [dict(rope[t]) for t in layer_types]
    return [rope] * config.num_hidden_layers


def _rotary_spec(config, rope: dict, head_dim: int) -> RotarySpec:
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if scaling.get("rope_type", "default") == "default":
        scaling = {}
    return RotarySpec(float(rope.get("rope_theta", 10000.0)), int(head_dim * partial), scaling)


def spec_from_model(model, model_id: str) -> ModelSpec:
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = _layer_attention(config)
    per_layer = tuple(_rotary_spec(config, rope, head_dim) for rope in layer_rope_parameters(config))
    full = [r for kind, r in zip(attention, per_layer) if kind == "full"]
    uniform = len(set(map(repr, per_layer))) <= 1
    return ModelSpec(
        model_id=model_id,
        family=family_of(config.model_type),
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        hidden=config.hidden_size,
        vocab=config.vocab_size,
        attention=attention,
        rotary=(full or list(per_layer))[0],
        trained_len=int(config.max_position_embeddings),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        params=sum(p.numel() for p in model.parameters()),
        rotary_layers=() if uniform else per_layer,
    )
