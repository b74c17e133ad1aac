"""ONNX lowering of ``lcc.attention``: onnxruntime's GroupQueryAttention, or MatMul/Softmax with a mask.

Two forms reach the exporter:

- ``lcc.attention`` itself, for prefill (``kv_len`` None) with a ``causal`` or sink-less
  ``sliding`` mask: one ``com.microsoft::GroupQueryAttention`` (GQA native, causal, its
  ``local_window_size`` is the window; onnxruntime's fastest CPU/CUDA attention);
- ``lcc_onnx.cache_attention(q, k_new, v_new, k_cache, v_cache, index, ...)`` for decode,
  where the node reads ``index_copy(cache, 2, position, k_new)`` with a causal or sink-less
  sliding mask: one GroupQueryAttention with the cache as ``past_key``/``past_value``, whose
  ``present_key``/``present_value`` are the new cache.  Bound to the same buffer as the past
  (onnxruntime-genai's shared past/present buffer; :class:`.runner.OnnxProgram` does the same),
  the cache is updated in place instead of copied every step;
- ``lcc_onnx.masked_attention(q, k, v, kv_len, allowed, ...)`` for everything else: the
  boolean mask ``allowed[Sq, Sk]`` is computed in the graph from the mask's own predicate
  (:func:`mask_allowed`, traced from :mod:`lcc.ops.masks`, so any registered mask kind
  lowers), then either GQA with an additive bias (prefill) or, with ``kv_len`` (decode,
  chunked prefill), keys sliced to ``[0, kv_len)`` and a grouped MatMul/Softmax/MatMul.

:func:`prepare` rewrites an entry graph's attention nodes into these forms before export.  Plain
Llama-family blocks (QKV projections, plain RoPE, a plain cache) never reach it: :mod:`.fuse`
has already made each of them one GroupQueryAttention with packed QKV and rotary inside.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from lcc.ops.masks import MaskSpec

# ---- the helper op the exporter sees for masked attention ----


@torch.library.custom_op("lcc_onnx::masked_attention", mutates_args=())
def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None,
                     allowed: torch.Tensor, scale: float, fused: bool, empty_rows: bool) -> torch.Tensor:
    """softmax(q k^T * scale where ``allowed`` else -inf) v over keys [0, kv_len); GQA grouped.

    ``fused``: the mask is causal-contained with a visible diagonal and kv_len is None, so
    GroupQueryAttention with an additive bias computes it.  ``empty_rows``: some query may see
    no key; its output is 0 (as the reference's ``nan_to_num``).
    """
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    scores = torch.matmul(q.reshape(B, Hkv, -1, Sq, D), k[:, :, None].transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return torch.matmul(probs, v[:, :, None]).reshape(B, Hq, Sq, v.shape[-1])


@masked_attention.register_fake
def _(q, k, v, kv_len, allowed, scale, fused, empty_rows):
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


@torch.library.custom_op("lcc_onnx::cache_attention", mutates_args=())
def cache_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, index: torch.Tensor, scale: float,
                    mask: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write k_new/v_new at ``index`` (a 1-element position) into the cache, attend over keys [0, index]."""
    k = k_cache.index_copy(2, index, k_new)
    v = v_cache.index_copy(2, index, v_new)
    out = torch.ops.lcc.attention(q, k.to(q.dtype), v.to(q.dtype), index.reshape(()) + 1, scale, mask, "auto")
    return out, k, v


@cache_attention.register_fake
def _(q, k_new, v_new, k_cache, v_cache, index, scale, mask):
    return (q.new_empty(q.shape[0], q.shape[1], q.shape[2], v_cache.shape[3]), torch.empty_like(k_cache),
            torch.empty_like(v_cache))


def mask_allowed(mask: str, Sq, Sk, kv_len, device) -> torch.Tensor:
    """``allowed[Sq, Sk]``: the mask predicate at absolute positions, keys past ``kv_len`` hidden.

    Queries sit at kv_len - Sq + i (kv_len None: all Sk keys valid), as :mod:`lcc.ops.attention`.
    """
    kv_idx = torch.arange(Sk, device=device)
    n = Sk if kv_len is None else kv_len.reshape(()).to(torch.long)
    q_pos = n - Sq + torch.arange(Sq, device=device)
    q_idx, k_idx = q_pos[:, None], kv_idx[None, :]
    return MaskSpec.parse(mask).mask_mod()(q_idx, k_idx) & (k_idx < n)


def diagonal_visible(mask: str, capacity: int) -> bool:
    """Whether every query position below ``capacity`` sees its own key (so no row is empty)."""
    pos = torch.arange(capacity)
    return bool(MaskSpec.parse(mask).mask_mod()(pos, pos).all())


def gqa_window(mask: str, kv_len) -> int | None:
    """GroupQueryAttention's ``local_window_size`` for this node (-1: causal), None if GQA cannot."""
    spec = MaskSpec.parse(mask)
    if kv_len is not None:
        return None
    if spec.kind == "causal":
        return -1
    if spec.kind == "sliding" and spec.args["sinks"] == 0:
        return spec.args["window"]
    return None


def _masked_call(fused: bool, empty_rows: bool):
    def call(q, k, v, kv_len, scale, mask="causal", algo="auto", softcap=0.0):  # softcap 0: capped nodes fall back
        allowed = mask_allowed(mask, q.shape[2], k.shape[2], kv_len, q.device)
        return torch.ops.lcc_onnx.masked_attention(q, k, v, kv_len, allowed, scale, fused, empty_rows)

    call.__name__ = "lcc_attention_masked"
    return call


IN_PLACE = "GroupQueryAttention over the cache (past/present may share a buffer)"


def cache_write(node) -> tuple | None:
    """(cache, index, new) when ``node`` is ``index_copy(cache, 2, index, new)`` (the decode cache write)."""
    if not isinstance(node, torch.fx.Node) or node.target != torch.ops.aten.index_copy.default:
        return None
    cache, dim, index, new = node.args
    return (cache, index, new) if dim == 2 else None


def fuse_decode(node: torch.fx.Node, args: dict) -> str | None:
    """Replace ``attention(q, index_copy(kc, 2, i, k), index_copy(vc, 2, i, v), i + 1)`` by one cache_attention.

    The cache writes' other users (the entry's cache outputs) read the fused node's new cache.
    """
    kw, vw = cache_write(args["k"]), cache_write(args["v"])
    if kw is None or vw is None or kw[1] is not vw[1] or args["kv_len"] is None:
        return None
    if gqa_window(args["mask"], None) is None or kw[2].meta["val"].shape[2] != 1:
        return None
    graph = node.graph
    with graph.inserting_before(node):
        fused = graph.call_function(torch.ops.lcc_onnx.cache_attention.default,
                                    (args["q"], kw[2], vw[2], kw[0], vw[0], kw[1], float(args["scale"]), args["mask"]))
        parts = [graph.call_function(operator.getitem, (fused, i)) for i in range(3)]
    for part, src in zip(parts, (node, args["k"], args["v"])):
        part.meta["val"] = src.meta.get("val")
    node.replace_all_uses_with(parts[0])
    graph.erase_node(node)
    for write, part in ((args["k"], parts[1]), (args["v"], parts[2])):
        write.replace_all_uses_with(part)
        graph.erase_node(write)
    window = gqa_window(args["mask"], None)
    return IN_PLACE + (
        "" if window < 0 else f" local_window_size={window}")


def prepare(node: torch.fx.Node, args: dict, capacity: int) -> str:
    """Point an attention node at its ONNX form; returns how it will be lowered (for the report)."""
    fused = fuse_decode(node, args)
    if fused is not None:
        return fused
    window = gqa_window(args["mask"], args["kv_len"])
    if window is not None:
        return "GroupQueryAttention" + ("" if window < 0 else f" local_window_size={window}")
    visible = diagonal_visible(args["mask"], capacity)
    fused = args["kv_len"] is None and MaskSpec.parse(args["mask"]).causal and visible
    node.target = _masked_call(fused, not visible)
    node.args, node.kwargs = tuple(args.values()), {}
    if args["kv_len"] is None:
        return "mask predicate in the graph + GroupQueryAttention attention_bias (or MatMul/Softmax)"
    return "keys sliced to kv_len + mask predicate in the graph + MatMul/Softmax"


# ---- onnxscript translations (traced by torch.onnx) ----


def _ops():
    from onnxscript import opset23 as op

    from lcc.backends.onnx.schemas import contrib_opset

    return op, contrib_opset("GroupQueryAttention")


def _to_bsh(op, x):
    """[B, H, S, D] -> [B, S, H*D]."""
    return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))


def _gqa(q, k, v, scale: float, window: int, bias=None):
    """GroupQueryAttention over q [B,Hq,S,D], k/v [B,Hkv,S,D] (no past), output back to [B,Hq,S,D]."""
    op, ms = _ops()
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[3]
    seq = op.Shape(q, start=2, end=3)
    batch = op.Shape(q, start=0, end=1)
    total = op.Cast(op.Squeeze(seq), to=6)  # int32
    seqlens = op.Expand(op.Cast(op.Sub(seq, op.Constant(value_ints=[1])), to=6), batch)
    inputs = [_to_bsh(op, q), _to_bsh(op, k), _to_bsh(op, v), None, None, seqlens, total]
    if bias is not None:
        inputs += [None, None, None, bias]
    out, _, _, _ = ms.GroupQueryAttention(*inputs, num_heads=hq, kv_num_heads=hkv, scale=float(scale),
                                          local_window_size=int(window))
    out = op.Reshape(out, op.Constant(value_ints=[0, 0, hq, d]))
    return op.Transpose(out, perm=[0, 2, 1, 3])


def attention_onnx(q, k, v, kv_len, scale: float, mask: str = "causal", algo: str = "auto", softcap: float = 0.0):
    """``lcc.attention`` nodes left by :func:`prepare`: prefill with a GQA-native mask."""
    window = gqa_window(mask, kv_len)
    assert window is not None, f"attention node with mask {mask!r} should have been prepared"
    return _gqa(q, k, v, scale, window)


def cache_attention_onnx(q, k_new, v_new, k_cache, v_cache, index, scale: float, mask: str):
    """GroupQueryAttention with the cache as past_key/past_value; total length index + 1."""
    op, ms = _ops()
    hq, hkv, d = q.shape[1], k_cache.shape[1], q.shape[3]
    batch = op.Shape(q, start=0, end=1)
    seqlens = op.Expand(op.Cast(index, to=6), batch)  # int32 [B]: tokens before the new one
    total = op.Cast(op.Squeeze(op.Add(index, op.Constant(value_ints=[1]))), to=6)
    out, k_present, v_present, _ = ms.GroupQueryAttention(
        _to_bsh(op, q), _to_bsh(op, k_new), _to_bsh(op, v_new), k_cache, v_cache, seqlens, total,
        num_heads=hq, kv_num_heads=hkv, scale=float(scale), local_window_size=int(gqa_window(mask, None)))
    out = op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, hq, d])), perm=[0, 2, 1, 3])
    return out, k_present, v_present


def _grouped_softmax_attention(q, k, v, allowed, scale: float, empty_rows: bool, hkv: int, dv: int):
    """softmax(q k^T * scale, masked) v with query head h reading kv head h // G, in plain ONNX ops.

    Computed in fp32 whatever the inputs' dtype (as the op's reference), the output cast back to q's.
    """
    op, _ = _ops()
    hq, d = q.shape[1], q.shape[3]
    g = hq // hkv
    q5 = op.Reshape(op.Cast(q, to=1), op.Constant(value_ints=[0, hkv, g, -1, d]))  # [B,Hkv,G,Sq,D]
    k5 = op.Unsqueeze(op.Transpose(op.Cast(k, to=1), perm=[0, 1, 3, 2]), op.Constant(value_ints=[2]))  # [B,Hkv,1,D,Sk]
    scores = op.Mul(op.MatMul(q5, k5), op.Constant(value_float=float(scale)))
    if allowed is not None:
        scores = op.Where(allowed, scores, op.Constant(value_float=float("-inf")))
    probs = op.Softmax(scores, axis=-1)
    if empty_rows:
        probs = op.Where(op.IsNaN(probs), op.Constant(value_float=0.0), probs)
    out = op.MatMul(probs, op.Unsqueeze(op.Cast(v, to=1), op.Constant(value_ints=[2])))  # [B,Hkv,G,Sq,Dv]
    return op.CastLike(op.Reshape(out, op.Constant(value_ints=[0, hq, -1, dv])), q)


def masked_attention_onnx(q, k, v, kv_len, allowed, scale: float, fused: bool, empty_rows: bool):
    op, _ = _ops()
    hkv, dv = k.shape[1], v.shape[3]
    if kv_len is None:
        if fused:  # GroupQueryAttention's attention_bias has q's dtype
            bias = op.Where(allowed, op.Constant(value_float=0.0), op.Constant(value_float=float("-inf")))
            return _gqa(q, k, v, scale, -1, op.Unsqueeze(op.CastLike(bias, q), op.Constant(value_ints=[0, 1])))
        return _grouped_softmax_attention(q, k, v, allowed, scale, empty_rows, hkv, dv)
    n = op.Reshape(op.Cast(kv_len, to=7), op.Constant(value_ints=[1]))
    zero, axis = op.Constant(value_ints=[0]), op.Constant(value_ints=[2])
    ks, vs = op.Slice(k, zero, n, axis), op.Slice(v, zero, n, axis)
    allowed = op.Slice(allowed, zero, n, op.Constant(value_ints=[1]))
    return _grouped_softmax_attention(q, ks, vs, allowed, scale, empty_rows, hkv, dv)
