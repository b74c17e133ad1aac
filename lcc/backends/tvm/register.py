"""The TVM lowerings of the lcc ops, registered with :func:`lcc.ops.registry.register_lowering`.

A lowering is a :class:`lcc.ops.registry.Lowering` whose ``emit`` is a Relax frontend converter
``(fx node, importer) -> relax.Expr`` and whose ``unsupported`` says when a particular node (a
mask without a portable predicate, a RoPE variant) must instead run as the op's reference
decomposition.
"""

from __future__ import annotations

from typing import Callable

from lcc.backends.tvm.aten import convert_index_copy, convert_index_put
from lcc.backends.tvm.attention import attention_unsupported, convert_attention
from lcc.backends.tvm.rope import convert_rope, rope_unsupported
from lcc.ops import registry
from lcc.ops.registry import Lowering

BACKEND = "tvm"


LOWERINGS = {
    "attention": Lowering(convert_attention, attention_unsupported,
                         "Relax matmul/softmax, GQA grouped, mask predicate as Relax ops"),
    "rope": Lowering(convert_rope, rope_unsupported,
                    "Relax cos/sin of positions*inv_freq, rotate-half; dynamic-ntk/longrope as where on length"),
}

for _name, _lowering in LOWERINGS.items():
    registry.register_lowering(_name, BACKEND, _lowering)

from lcc.backends.tvm import rerope  # noqa: E402,F401  (registers rerope_attention's lowering, every kind)


# ATen ops whose TVM frontend conversion is wrong for lcc programs (see lcc.backends.tvm.aten)
ATEN_FIXES = {"index_put.default": convert_index_put, "index_copy.default": convert_index_copy}


def convert_map() -> dict[str, Callable]:
    """``custom_convert_map`` for ``from_exported_program``: the importer keys ops by ``target.__name__``."""
    out = dict(ATEN_FIXES)
    for name, opdef in registry.ops().items():
        lowering = opdef.lowerings.get(BACKEND)
        if lowering is not None:
            out[opdef.op.__name__] = lowering.emit
    return out
