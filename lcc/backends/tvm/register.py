"""The TVM lowerings of the lcc ops, registered with :func:`lcc.ops.registry.register_lowering`.

A lowering is a Relax frontend converter ``(fx node, importer) -> relax.Expr`` plus a check that
says when a particular node (a mask without a portable predicate, a RoPE variant) must instead
run as the op's reference decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lcc.backends.tvm.aten import convert_index_copy, convert_index_put
from lcc.backends.tvm.attention import attention_unsupported, convert_attention
from lcc.backends.tvm.rope import convert_rope, rope_unsupported
from lcc.ops import registry

BACKEND = "tvm"


@dataclass(frozen=True)
class TvmLowering:
    """A ``custom_convert_map`` entry for one op, and when it does not apply."""

    convert: Callable  # (fx.Node, importer) -> relax.Expr
    unsupported: Callable[[dict], str | None]  # schema args -> reason, or None
    how: str

    def __call__(self, node, importer):
        return self.convert(node, importer)


LOWERINGS = {
    "attention": TvmLowering(convert_attention, attention_unsupported,
                             "Relax matmul/softmax, GQA grouped, mask predicate as Relax ops"),
    "rope": TvmLowering(convert_rope, rope_unsupported,
                        "Relax cos/sin of positions*inv_freq, rotate-half; dynamic-ntk/longrope as where on length"),
}

for _name, _lowering in LOWERINGS.items():
    registry.register_lowering(_name, BACKEND, _lowering)


# ATen ops whose TVM frontend conversion is wrong for lcc programs (see lcc.backends.tvm.aten)
ATEN_FIXES = {"index_put.default": convert_index_put, "index_copy.default": convert_index_copy}


def convert_map() -> dict[str, Callable]:
    """``custom_convert_map`` for ``from_exported_program``: the importer keys ops by ``target.__name__``."""
    out = dict(ATEN_FIXES)
    for name, opdef in registry.ops().items():
        lowering = opdef.lowerings.get(BACKEND)
        if lowering is not None:
            out[opdef.op.__name__] = lowering
    return out
