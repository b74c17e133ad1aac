"""onnxruntime's ``com.microsoft`` op schemas, copied into ONNX's registry so onnxscript can emit them.

onnxscript builds a node from the op's ``onnx.defs`` schema; contrib ops such as
``GroupQueryAttention`` are only known to onnxruntime, so their schemas (as onnxruntime
reports them) are registered with ONNX once, on first use.
"""

from __future__ import annotations

import functools

import onnx.defs

DOMAIN = "com.microsoft"


def _formal(p) -> onnx.defs.OpSchema.FormalParameter:
    option = onnx.defs.OpSchema.FormalParameterOption(int(p.option))
    return onnx.defs.OpSchema.FormalParameter(p.name, p.typeStr, param_option=option)


def _attribute(name: str, a) -> onnx.defs.OpSchema.Attribute:
    kind = onnx.defs.OpSchema.AttrType(int(a.type))
    return onnx.defs.OpSchema.Attribute(name, kind, required=bool(a.required))


@functools.cache
def contrib_opset(*names: str):
    """An onnxscript ``Opset`` for ``com.microsoft`` whose ops ``names`` are usable (schemas registered)."""
    import onnxscript
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    wanted = set(names)
    for s in C.get_all_operator_schema():
        if s.domain != DOMAIN or s.name not in wanted:
            continue
        if onnx.defs.has(s.name, s.since_version, DOMAIN):
            continue
        onnx.defs.register_schema(onnx.defs.OpSchema(
            s.name, DOMAIN, s.since_version, s.doc or "",
            inputs=[_formal(p) for p in s.inputs],
            outputs=[_formal(p) for p in s.outputs],
            type_constraints=[(t.type_param_str, list(t.allowed_type_strs), "") for t in s.type_constraints],
            attributes=[_attribute(n, a) for n, a in s.attributes.items()],
        ))
    return onnxscript.values.Opset(DOMAIN, 1)
