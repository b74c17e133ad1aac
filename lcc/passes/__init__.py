"""Passes: the registry, the manager, canonicalization and the rewrites."""

from lcc.passes.base import (  # noqa: F401
    REGISTRY, SLOTS, Param, PassDef, PassResult, PassSpec, parse_pass, register,
)
from lcc.passes.manager import apply_passes, check_passes, run_pass  # noqa: F401
from lcc.passes.canonicalize import canonicalize  # noqa: F401
from lcc.passes import attention  # noqa: F401,E402  (registers attention rewrites)
from lcc.passes import linear_attention, sparse  # noqa: F401,E402  (register linear-attention, block-sparse)
from lcc.passes import rope_scaling  # noqa: F401,E402  (registers rope-scaling)
from lcc.passes import kv_cache  # noqa: F401,E402  (registers kv-quant, kv-sink-cache)
from lcc.passes import rerope  # noqa: F401,E402  (registers rerope, leaky-rerope)
from lcc.passes import memory_tokens  # noqa: F401,E402  (registers memory-tokens)
from lcc.passes import context_parallel  # noqa: F401,E402  (registers context-parallel)
