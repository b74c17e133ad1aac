"""``lcc.attention`` as Relax ops: GQA by grouping query heads, the mask computed from positions.

Scores are ``q k^T * scale`` per KV head with its ``G = Hq / Hkv`` query heads stacked along the
rows (no repeated K/V), soft-capped (``tanh(s / softcap) * softcap``, Gemma 2) when the node says
so, masked by the op's predicate evaluated on absolute positions (queries
aligned to the end of the ``kv_len`` valid keys), softmaxed in fp32 and multiplied by V.  Rows
that see no key give zeros, as in the reference.  LegalizeOps + FuseOps turn this into a few
fused TIR kernels on any target.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from lcc.backends.tvm.masks import emit_mask, portable_predicate
from lcc.backends.tvm.nodes import dtype as dtype_of, relax_args, shape

_NEG = -3.4028234663852886e38  # finite fill: exp underflows to exactly 0, a fully masked row stays finite


def attention_unsupported(args: dict) -> str | None:
    """Why this node cannot be lowered natively (then it runs as the reference), or None."""
    if portable_predicate(str(args["mask"])) is None:
        return f"mask {args['mask']!r} has no portable predicate"
    return None


def _allowed(bb, mask: str, kv_len, Sq, Sk):
    """Boolean [b, Sq, Sk] (b = 1 or B): key j visible from query i under ``mask`` and ``kv_len``."""
    e = bb.emit
    kv_idx = e(R.reshape(e(R.arange(0, Sk, 1, "int64")), (1, 1, Sk)))
    if kv_len is None:  # all Sk keys valid: query i at Sk - Sq + i
        q_pos = e(R.reshape(e(R.arange(Sk - Sq, Sk, 1, "int64")), (1, Sq, 1)))
        return emit_mask(bb, mask, q_pos, kv_idx)
    n = e(R.reshape(e(R.astype(kv_len, "int64")), (-1, 1, 1)))  # [b, 1, 1]
    q_pos = e(R.add(n, e(R.reshape(e(R.arange(-Sq, 0, 1, "int64")), (1, Sq, 1)))))  # n - Sq + i
    visible = emit_mask(bb, mask, q_pos, kv_idx)
    return e(R.logical_and(visible, e(R.less(kv_idx, n))))


def convert_attention(node, importer) -> relax.Expr:
    """The Relax subgraph of one ``lcc.attention`` node."""
    a = relax_args(node, importer)
    bb = importer.block_builder
    e = bb.emit
    q, k, v, kv_len = a["q"], a["k"], a["v"], a["kv_len"]
    B, Hq, Sq, D = shape(q)
    _, Hkv, Sk, _ = shape(k)
    Dv = shape(v)[3]
    G = int(Hq) // int(Hkv)
    dtype = dtype_of(q)
    if dtype != "float32":
        q, k, v = (e(R.astype(t, "float32")) for t in (q, k, v))
    qg = e(R.reshape(q, (B, Hkv, G * Sq, D)))  # [B,Hkv,G*Sq,D]: head h reads kv head h // G
    scores = e(R.matmul(qg, e(R.permute_dims(k, [0, 1, 3, 2]))))
    scores = e(R.multiply(scores, relax.const(float(a["scale"]), "float32")))
    softcap = float(a.get("softcap") or 0.0)
    if softcap:
        capped = e(R.tanh(e(R.divide(scores, relax.const(softcap, "float32")))))
        scores = e(R.multiply(capped, relax.const(softcap, "float32")))
    scores = e(R.reshape(scores, (B, Hkv, G, Sq, Sk)))
    allowed = e(R.expand_dims(_allowed(bb, str(a["mask"]), kv_len, Sq, Sk), [1, 2]))  # [b,1,1,Sq,Sk]
    scores = e(R.where(allowed, scores, relax.const(_NEG, "float32")))
    probs = e(R.where(allowed, e(R.nn.softmax(scores, axis=-1)), relax.const(0.0, "float32")))
    out = e(R.matmul(e(R.reshape(probs, (B, Hkv, G * Sq, Sk))), v))
    out = e(R.reshape(out, (B, Hq, Sq, Dv)))
    return e(R.astype(out, dtype)) if dtype != "float32" else out
