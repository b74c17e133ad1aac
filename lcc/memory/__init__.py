"""Memory tokens (RMT): fitting the memory embeddings of the ``memory-tokens`` pass."""

from lcc.memory.train import rmt_nll, train_memory  # noqa: F401
