"""The op vocabulary: custom ops in namespace ``lcc`` that passes and backends speak."""

from lcc.ops import masks, registry  # noqa: F401
from lcc.ops.attention import attention, attention_chunked, attention_reference  # noqa: F401
from lcc.ops.rope import rope, rope_reference  # noqa: F401

ATTENTION = "attention"
ROPE = "rope"
from lcc.ops import rerope, rope_scaling  # noqa: F401,E402  (rerope op; rope variants)
from lcc.ops import linear_attention  # noqa: F401,E402  (lcc.linear_attention op)
from lcc.ops import context_parallel  # noqa: F401,E402  (lcc.cp_* ops: a context-parallel artifact loads without lcc.passes)
