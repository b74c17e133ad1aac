"""Models: load HF directories, hub ids from the local HF cache, GGUF files and presets; describe them as a ``ModelSpec``."""

from lcc.models.loader import (DEFAULT_MODEL, DTYPES, LoadedModel, cache_dir, load_model, presets,  # noqa: F401
                               torch_dtype)
from lcc.models.spec import FAMILIES, ModelSpec, RotarySpec  # noqa: F401
