"""Attention-block fusion for the ONNX lowering: packed QKV projection, rotary inside GroupQueryAttention.

A captured layer computes, for a plain KV cache,

    q = rope(transpose(view(linear(x, Wq))), positions, inv_freq)      k, v likewise (v without rope)
    cache_k' = index_copy(cache_k, 2, position, k)   (decode)   or   slice_scatter(cache_k, k, 2, 0, S)   (prefill)
    out = reshape(transpose(attention(q, k or cache_k', v or cache_v', ...)))   -> o_proj

which lowers to three MatMuls, two RotaryEmbeddings and a dozen Reshape/Transpose nodes around
one GroupQueryAttention.  onnxruntime's GroupQueryAttention takes all of it in one node: a
packed ``[B, S, (Hq + 2 Hkv) D]`` QKV input, rotary from ``cos_cache``/``sin_cache`` tables
(``do_rotary``) at the positions it derives from ``seqlens_k``, the cache as past/present
(updated in place when the buffers are shared), and a ``[B, S, Hq D]`` output that o_proj
reads directly.  That is what onnxruntime-genai's model builder emits for Llama-family models;
:func:`fuse_attention_blocks` finds the pattern in an entry graph and replaces it by one
``lcc_onnx::packed_attention`` node (with one packed weight), so the exported graph has it.

The rewrite applies only where it is exact: plain RoPE (no length-dependent variant, full
rotary dimension or a leading part of it), positions equal to the cache index (decode) or 0..S-1 (prefill), a causal
or sink-less sliding mask, no other reader of the intermediate values.  Anything else keeps
the unfused lowering.  The cos/sin tables are ``cos(p * inv_freq) * attention_scaling`` for
p < capacity, the same fp32 products the op's reference takes the cosine of.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from lcc.backends.onnx.attention import IN_PLACE
from lcc.graph import named_args

PACKED = "; packed QKV, rotary inside (do_rotary)"

_VIEWS = (torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default)
_PASS = (torch.ops.aten.expand.default, torch.ops.aten.unsqueeze.default, torch.ops.aten.reshape.default,
         torch.ops.aten.view.default, torch.ops.aten.contiguous.default, torch.ops.aten.clone.default)


@torch.library.custom_op("lcc_onnx::packed_attention", mutates_args=())
def packed_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor | None,
                     cos: torch.Tensor, sin: torch.Tensor, scale: float, window: int, heads: int,
                     kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused block in torch (what GroupQueryAttention computes): returns (out [B,S,Hq*D], k_cache', v_cache').

    ``index`` None: prefill at positions 0..S-1 (the cache written at [0, S)); else decode of one
    token at position ``index`` (a 1-element tensor).
    """
    from lcc.ops.rope import rotate_half

    B, S, _ = qkv.shape
    D = k_cache.shape[-1]
    q, k, v = qkv.view(B, S, heads + 2 * kv_heads, D).transpose(1, 2).split([heads, kv_heads, kv_heads], dim=1)
    start = 0 if index is None else int(index.reshape(()))
    pos = torch.arange(start, start + S, device=qkv.device)
    c = torch.cat([cos[pos], cos[pos]], -1).to(qkv.dtype)
    s = torch.cat([sin[pos], sin[pos]], -1).to(qkv.dtype)
    r = c.shape[-1]  # rotary dims: the first r of each head (partial rotary leaves the rest as they are)

    def rotate(x):
        return torch.cat([x[..., :r] * c + rotate_half(x[..., :r]) * s, x[..., r:]], -1)

    q, k = rotate(q), rotate(k)
    k_cache = k_cache.clone()
    v_cache = v_cache.clone()
    k_cache[:, :, start:start + S] = k.to(k_cache.dtype)
    v_cache[:, :, start:start + S] = v.to(v_cache.dtype)
    mask = "causal" if window < 0 else f"sliding:window={window},sinks=0"
    kv_len = None if index is None else torch.tensor(start + 1)
    kk, vv = (k, v) if index is None else (k_cache.to(q.dtype), v_cache.to(q.dtype))
    out = torch.ops.lcc.attention(q.contiguous(), kk.contiguous(), vv.contiguous(), kv_len, scale, mask, "auto")
    return out.transpose(1, 2).reshape(B, S, heads * D), k_cache, v_cache


@packed_attention.register_fake
def _(qkv, k_cache, v_cache, index, cos, sin, scale, window, heads, kv_heads):
    B, S, _ = qkv.shape
    return (qkv.new_empty(B, S, heads * k_cache.shape[-1]), torch.empty_like(k_cache), torch.empty_like(v_cache))


def packed_attention_onnx(qkv, k_cache, v_cache, index, cos, sin, scale: float, window: int, heads: int,
                          kv_heads: int):
    """One GroupQueryAttention: packed QKV, rotary from the tables, the cache as past/present."""
    from onnxscript import opset23 as op

    from lcc.backends.onnx.schemas import contrib_opset

    ms = contrib_opset("GroupQueryAttention")
    batch = op.Shape(qkv, start=0, end=1)
    if index is None:  # prefill: tokens 0..S-1
        seq = op.Shape(qkv, start=1, end=2)
        seqlens = op.Expand(op.Cast(op.Sub(seq, op.Constant(value_ints=[1])), to=6), batch)
        total = op.Cast(op.Squeeze(seq), to=6)
    else:  # decode: one token at `index`, tokens [0, index) already cached
        seqlens = op.Expand(op.Cast(op.Reshape(index, op.Constant(value_ints=[1])), to=6), batch)
        total = op.Cast(op.Squeeze(op.Add(op.Reshape(index, op.Constant(value_ints=[1])),
                                          op.Constant(value_ints=[1]))), to=6)
    if qkv.dtype is not None and qkv.dtype.name != "FLOAT":
        cos, sin = op.CastLike(cos, qkv), op.CastLike(sin, qkv)
    out, k_present, v_present, _ = ms.GroupQueryAttention(
        qkv, None, None, k_cache, v_cache, seqlens, total, cos, sin,
        num_heads=heads, kv_num_heads=kv_heads, scale=float(scale), local_window_size=int(window), do_rotary=1)
    return out, k_present, v_present


# ---- matching ----


def _target(node, *targets) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in targets


def _root(node):
    """Follow shape-only ops (expand/unsqueeze/reshape/view) back to the value they reshape."""
    while _target(node, *_PASS):
        node = node.args[0]
    return node


def _only_user(node: torch.fx.Node, user: torch.fx.Node) -> bool:
    return set(node.users) == {user}


def _head_projection(node):
    """``transpose(view(P, [B, S, -1, D]), 1, 2)`` where P is ``linear(x, W[, b])`` or a last-dim slice of one
    (a model's own packed projection, as Phi-3's ``qkv_proj``) -> (x, W, b, linear, slice range or None), else None."""
    if not _target(node, torch.ops.aten.transpose.int) or tuple(node.args[1:]) not in ((1, 2), (2, 1)):
        return None
    view = node.args[0]
    if not _target(view, *_VIEWS) or not _only_user(view, node):
        return None
    src, rng = view.args[0], None
    if _target(src, torch.ops.aten.slice.Tensor):
        if not _only_user(src, view) or len(src.args) < 4 or src.args[1] not in (2, -1):
            return None
        step = src.args[4] if len(src.args) > 4 else 1
        if step != 1:
            return None
        rng, src = (src.args[2], src.args[3]), src.args[0]
    elif not _only_user(src, view):
        return None
    lin = src
    if not _target(lin, torch.ops.aten.linear.default):
        return None
    x, w = lin.args[0], lin.args[1]
    b = lin.args[2] if len(lin.args) > 2 else None
    if not isinstance(w, torch.fx.Node) or w.op != "get_attr":
        return None
    if b is not None and (not isinstance(b, torch.fx.Node) or b.op != "get_attr"):
        return None
    return x, w, b, lin, rng


def _packed_source(projections) -> torch.fx.Node | None:
    """The model's own QKV linear when q, k, v are consecutive slices [0, a), [a, b), [b, end) of one linear."""
    (_, _, _, lq, rq), (_, _, _, lk, rk), (_, _, _, lv, rv) = projections
    if rq is None or rk is None or rv is None or not (lq is lk is lv) or set(lq.users) != {
            n for n in lq.users if _target(n, torch.ops.aten.slice.Tensor)} or len(lq.users) != 3:
        return None
    rows = lq.args[1].meta["val"].shape[0] if "val" in lq.args[1].meta else None
    end_ok = rv[1] is not None and (rows is None or rv[1] >= rows)
    return lq if rq[0] == 0 and rq[1] == rk[0] and rk[1] == rv[0] and end_ok else None


def _rope_of(node):
    """``lcc.rope`` node args when ``node`` is a plain full-dimension rope, else None."""
    if not _target(node, torch.ops.lcc.rope.default):
        return None
    args = named_args(node)
    if args["variant"] or not isinstance(args["inv_freq"], torch.fx.Node) or args["inv_freq"].op != "get_attr":
        return None
    return args


def _attr(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor:
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _new_attr(gm: torch.fx.GraphModule, name: str, value: torch.Tensor, before: torch.fx.Node) -> torch.fx.Node:
    base, i = name, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    gm.register_buffer(name, value)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    node.meta["val"] = value
    return node


def _prefill_write(node):
    """(cache, new) when ``node`` is the prefill cache write ``slice_scatter(cache, new, 2, 0, S)``."""
    if not _target(node, torch.ops.aten.slice_scatter.default):
        return None
    cache, new, dim, start = node.args[:4]
    return (cache, new) if dim == 2 and start == 0 else None


def _match(gm, node: torch.fx.Node):
    """Everything the fusion of attention ``node`` needs, or None when the block is not the plain pattern."""
    from lcc.backends.onnx.attention import cache_write, gqa_window

    args = named_args(node)
    prefill = args["kv_len"] is None
    window = gqa_window(args["mask"], None)
    if window is None or args.get("softcap"):
        return None
    q_rope = _rope_of(args["q"])
    if q_rope is None:
        return None
    if prefill:
        k_rot, v_new = args["k"], args["v"]
        k_rope = _rope_of(k_rot)
        writes = [u for u in k_rot.users if u is not node] if isinstance(k_rot, torch.fx.Node) else []
        v_writes = [u for u in v_new.users if u is not node] if isinstance(v_new, torch.fx.Node) else []
        if len(writes) != 1 or len(v_writes) != 1:
            return None
        kw, vw = _prefill_write(writes[0]), _prefill_write(v_writes[0])
        if kw is None or vw is None or kw[1] is not k_rot or vw[1] is not v_new:
            return None
        k_write, v_write, index = writes[0], v_writes[0], None
        pos_root = _root(q_rope["positions"])
        if not _target(pos_root, torch.ops.aten.arange.default) or len(pos_root.args) != 1:
            return None  # positions are arange(S): 0..S-1
    else:
        kw, vw = cache_write(args["k"]), cache_write(args["v"])  # (cache, index, new)
        if kw is None or vw is None or kw[1] is not vw[1]:
            return None
        k_write, v_write = args["k"], args["v"]
        k_rot, v_new, index = kw[2], vw[2], kw[1]
        k_rope = _rope_of(k_rot)
        if _root(q_rope["positions"]) is not _root(index) or _root(index).op != "placeholder":
            return None  # the rope positions are the cache index
        kv_len = args["kv_len"]  # index + 1
        if not (_target(kv_len, torch.ops.aten.add.Tensor) and _root(kv_len.args[0]) is _root(index)
                and kv_len.args[1] == 1):
            return None
        if not (_only_user(k_rot, k_write) and _only_user(v_new, v_write)):
            return None
    if k_rope is None or k_rope["positions"] is not q_rope["positions"]:
        return None
    if k_rope["inv_freq"] is not q_rope["inv_freq"] or k_rope["attention_scaling"] != q_rope["attention_scaling"]:
        return None
    qp, kp, vp = _head_projection(q_rope["x"]), _head_projection(k_rope["x"]), _head_projection(v_new)
    if qp is None or kp is None or vp is None or not (qp[0] is kp[0] is vp[0]):
        return None
    packed = _packed_source((qp, kp, vp))
    if packed is None and any(p[4] is not None for p in (qp, kp, vp)):
        return None  # slices of something other than one packed projection
    if packed is None and ((qp[2] is None) != (kp[2] is None) or (qp[2] is None) != (vp[2] is None)):
        return None
    if not (_only_user(args["q"], node) and _only_user(q_rope["x"], args["q"]) and _only_user(k_rope["x"], k_rot)
            and set(v_new.users) <= {node, v_write} and set(k_rot.users) <= {node, k_write}):
        return None
    # the output: reshape(transpose(out, 1, 2), [B, S, -1]) read by the output projection
    users = list(node.users)
    if len(users) != 1 or not _target(users[0], torch.ops.aten.transpose.int):
        return None
    merge = users[0]
    while len(merge.users) == 1 and _target(next(iter(merge.users)), torch.ops.aten.contiguous.default):
        merge = next(iter(merge.users))
    if len(merge.users) != 1 or not _target(next(iter(merge.users)), *_VIEWS):
        return None
    merged = next(iter(merge.users))
    q_val, k_val = args["q"].meta.get("val"), k_rot.meta.get("val")
    inv_freq = _attr(gm, q_rope["inv_freq"])
    if q_val is None or k_val is None or 2 * inv_freq.numel() > q_val.shape[-1] or inv_freq.numel() % 8:
        return None  # onnxruntime: the rotary tables' width (rotary dims / 2) is a multiple of 8 within the head
    if merged.meta.get("val") is None or merged.meta["val"].dim() != 3:
        return None
    return dict(args=args, prefill=prefill, window=window, q_rope=q_rope, index=index, k_write=k_write,
                v_write=v_write, projections=(qp, kp, vp), packed=packed, merged=merged, inv_freq=inv_freq,
                heads=q_val.shape[1], kv_heads=k_val.shape[1], caches=(kw[0], vw[0]))


def _tables(m: dict, capacity: int):
    inv_freq = m["inv_freq"].float()
    freqs = torch.arange(capacity, dtype=torch.float)[:, None] * inv_freq[None, :]
    scaling = float(m["q_rope"]["attention_scaling"])
    return freqs.cos() * scaling, freqs.sin() * scaling


def fuse_attention_blocks(gm: torch.fx.GraphModule, capacity: int) -> list[dict]:
    """Replace each plain attention block of ``gm`` by one ``lcc_onnx.packed_attention``; returns per-node records
    (the attention and both rope nodes of each fused block) as :func:`.export.prepare_graph` reports them."""
    graph = gm.graph
    records, tables = [], {}
    for node in list(graph.nodes):
        if not _target(node, torch.ops.lcc.attention.default):
            continue
        m = _match(gm, node)
        if m is None:
            continue
        (qp, kp, vp), args = m["projections"], m["args"]
        x = qp[0]
        first = min((qp[3], kp[3], vp[3]), key=lambda n: list(graph.nodes).index(n))
        key = id(m["q_rope"]["inv_freq"]), float(m["q_rope"]["attention_scaling"])
        if key not in tables:
            cos, sin = _tables(m, capacity)
            anchor = next(iter(graph.nodes))
            while anchor.op == "placeholder":
                anchor = anchor.next
            tables[key] = (_new_attr(gm, "lcc_rope_cos_cache", cos, anchor),
                           _new_attr(gm, "lcc_rope_sin_cache", sin, anchor))
        cos_node, sin_node = tables[key]
        if m["packed"] is not None:  # the model's own QKV projection already is GroupQueryAttention's input
            qkv = m["packed"]
        else:
            weights = [_attr(gm, p[1]) for p in (qp, kp, vp)]
            w_node = _new_attr(gm, f"{qp[1].target.replace('.', '_')}_qkv", torch.cat(weights, 0), first)
            lin_args = [x, w_node]
            if qp[2] is not None:
                lin_args.append(_new_attr(gm, f"{qp[2].target.replace('.', '_')}_qkv",
                                          torch.cat([_attr(gm, p[2]) for p in (qp, kp, vp)], 0), first))
            with graph.inserting_before(first):
                qkv = graph.call_function(torch.ops.aten.linear.default, tuple(lin_args))
            x_val = x.meta.get("val")
            if x_val is not None:
                qkv.meta["val"] = torch.empty(*x_val.shape[:-1], w_node.meta["val"].shape[0], dtype=x_val.dtype,
                                              device="meta")
        k_cache, v_cache = m["caches"]
        with graph.inserting_before(node):
            fused = graph.call_function(torch.ops.lcc_onnx.packed_attention.default,
                                        (qkv, k_cache, v_cache, m["index"], cos_node, sin_node,
                                         float(args["scale"]), int(m["window"]), int(m["heads"]), int(m["kv_heads"])))
            parts = [graph.call_function(operator.getitem, (fused, i)) for i in range(3)]
        for part, src in zip(parts, (m["merged"], m["k_write"], m["v_write"])):
            part.meta["val"] = src.meta.get("val")
        for src, part in zip((m["merged"], m["k_write"], m["v_write"]), parts):
            src.replace_all_uses_with(part)
        layer = node.meta.get("lcc_layer")
        qkv.meta["lcc_layer"] = fused.meta["lcc_layer"] = layer
        how = IN_PLACE + PACKED
        records.append({"op": "attention", "node": node.name, "layer": layer, "fallback": False, "how": how})
        for rope in (m["args"]["q"], _rope_node(m)):
            records.append({"op": "rope", "node": rope.name, "layer": layer, "fallback": False,
                            "how": "inside GroupQueryAttention (do_rotary, cos/sin tables of the capacity)"})
    if records:
        graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        graph.lint()
        gm.recompile()
    return records


def _rope_node(m: dict) -> torch.fx.Node:
    if m["prefill"]:
        return m["args"]["k"]
    return m["k_write"].args[3]


def share_tied_embedding(gm: torch.fx.GraphModule) -> bool:
    """Store a tied embedding / output-projection matrix once: as the [H, V] matrix the logits MatMul reads.

    ``linear(x, W)`` exports as ``MatMul(x, W^T)`` with ``W^T`` folded into a second initializer
    beside the embedding's ``W`` (smollm2: 113 MB twice, on disk and in memory).  Here both read one
    ``W^T`` buffer: the logits are ``matmul(x, W^T)`` and the embedding is ``index_select(W^T, 1, ids)``
    moved back to [B, S, H].  Returns whether the graph changed.
    """
    graph = gm.graph
    emb = [n for n in graph.nodes if _target(n, torch.ops.aten.embedding.default)]
    heads = [n for n in graph.nodes if _target(n, torch.ops.aten.linear.default) and len(n.args) == 2]
    if len(emb) != 1 or not isinstance(emb[0].args[0], torch.fx.Node) or emb[0].args[0].op != "get_attr":
        return False
    table = _attr(gm, emb[0].args[0])
    tied = [h for h in heads if isinstance(h.args[1], torch.fx.Node) and h.args[1].op == "get_attr"
            and _same_tensor(_attr(gm, h.args[1]), table)]
    if not tied:
        return False
    first = next(n for n in graph.nodes if n.op != "placeholder")
    wt = _new_attr(gm, "lcc_tied_embedding_t", table.detach().t().contiguous(), first)
    e = emb[0]
    ids = e.args[1]
    with graph.inserting_before(e):
        flat = graph.call_function(torch.ops.aten.reshape.default, (ids, [-1]))
        cols = graph.call_function(torch.ops.aten.index_select.default, (wt, 1, flat))
        rows = graph.call_function(torch.ops.aten.t.default, (cols,))
        shape = graph.call_function(torch.ops.aten.sym_size.int, (ids, 1))
        out = graph.call_function(torch.ops.aten.reshape.default, (rows, [ids.meta["val"].shape[0], shape, -1]))
    out.meta["val"] = e.meta.get("val")
    e.replace_all_uses_with(out)
    graph.erase_node(e)
    for h in tied:
        with graph.inserting_before(h):
            mm = graph.call_function(torch.ops.aten.matmul.default, (h.args[0], wt))
        mm.meta["val"] = h.meta.get("val")
        h.replace_all_uses_with(mm)
        graph.erase_node(h)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return True


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and (a.data_ptr() == b.data_ptr() or torch.equal(a, b))
