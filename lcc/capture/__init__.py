"""Capture: torch.export of a HF causal LM into an lcc program with an explicit KV cache."""

from lcc.capture.export import capture  # noqa: F401
from lcc.capture.program import CacheLayout, Program  # noqa: F401
