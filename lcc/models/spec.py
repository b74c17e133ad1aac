"""``ModelSpec``: what the rest of lcc needs to know about a loaded model, read from its HF config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

# lcc family name -> transformers model_type
FAMILIES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gpt-neox": "gpt_neox",
}
MODEL_TYPE_TO_FAMILY = {v: k for k, v in FAMILIES.items()}


@dataclass(frozen=True)
class RotarySpec:
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
    rotary: RotarySpec
    trained_len: int
    dtype: str
    params: int

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


def spec_from_model(model, model_id: str) -> ModelSpec:
    config = model.config
    family = MODEL_TYPE_TO_FAMILY[config.model_type]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = dict(getattr(config, "rope_parameters", None) or {})
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    rotary_dim = int(head_dim * partial)
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if scaling.get("rope_type") == "default":
        scaling = {}
    original = rope.get("original_max_position_embeddings")
    trained = int(original or config.max_position_embeddings)
    return ModelSpec(
        model_id=model_id,
        family=family,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        hidden=config.hidden_size,
        vocab=config.vocab_size,
        attention=_layer_attention(config),
        rotary=RotarySpec(float(rope.get("rope_theta", 10000.0)), rotary_dim, scaling),
        trained_len=trained,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        params=sum(p.numel() for p in model.parameters()),
    )
