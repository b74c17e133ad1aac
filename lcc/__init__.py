"""lcc: a compiler for long-context LLMs."""

__version__ = "0.1.0"
