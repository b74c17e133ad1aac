"""Models: load HF directories, GGUF files and presets; describe them as a ``ModelSpec``."""

from lcc.models.loader import DEFAULT_MODEL, LoadedModel, cache_dir, load_model, presets  # noqa: F401
from lcc.models.spec import FAMILIES, ModelSpec, RotarySpec  # noqa: F401
