"""ONNX lowering of ``lcc.rerope_attention`` (Su 2023): the paper's two-score form, written for export.

The op's reference loops over query chunks in Python, which ``torch.export`` cannot trace with
a dynamic sequence length; :func:`prepare` points each node at :func:`rerope_for_export`
instead, the same arithmetic as one traced expression: q and k rotated twice with
``lcc.rope`` (in-window positions, and the rectified ones w + f (p_i - w), f p_j; these lower
to ``RotaryEmbedding``), two grouped score matrices selected per pair by p_i - p_j < w, the
mask predicate and kv_len in the graph, softmax, MatMul with v.  Decode attends over the
whole cache under the mask (keys past kv_len hidden).
"""

from __future__ import annotations

import torch
import torch.fx

from lcc.ops.masks import MaskSpec


def _grouped_scores(q, k, scale):
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    return torch.matmul(q.reshape(B, Hkv, Hq // Hkv, Sq, D), k[:, :, None].transpose(-1, -2)) * scale


def rerope_for_export(q, k, v, positions, inv_freq, attention_scaling, kv_len, scale, window, leaky_factor=0.0,
                      mask="causal", algo="auto"):
    """:func:`lcc.ops.rerope.rerope_reference` without Python control flow on sizes or data (fp32)."""
    B, Hq, Sq, D = q.shape
    Sk = k.shape[2]
    kv_idx = torch.arange(Sk, device=q.device)
    n = Sk if kv_len is None else kv_len.reshape(()).to(torch.long)
    if positions is None:
        q_pos = (n - Sq + torch.arange(Sq, device=q.device))[None, :].expand(B, Sq)
    else:
        q_pos = positions.to(torch.long).expand(B, Sq)
    k_pos = kv_idx[None, :].expand(B, Sk)
    q_out = window + leaky_factor * (q_pos.float() - window)
    k_out = leaky_factor * k_pos.float()
    rope = torch.ops.lcc.rope
    s1 = _grouped_scores(rope(q, q_pos, inv_freq, attention_scaling, ""), rope(k, k_pos, inv_freq, attention_scaling, ""),
                         scale)
    s2 = _grouped_scores(rope(q, q_out, inv_freq, attention_scaling, ""),
                         rope(k, k_out, inv_freq, attention_scaling, ""), scale)
    qp, kp = q_pos[:, :, None], kv_idx[None, None, :]
    inside = (qp - kp) < window  # [B, Sq, Sk]
    allowed = MaskSpec.parse(mask).mask_mod()(qp, kp) & (kp < n)
    scores = torch.where(inside[:, None, None], s1, s2).masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.matmul(probs, v[:, :, None])
    return out.reshape(B, Hq, Sq, v.shape[-1])


def prepare(node: torch.fx.Node, args: dict, capacity: int) -> str:
    node.target = rerope_for_export
    node.args, node.kwargs = tuple(args.values()), {}
    return "two RotaryEmbedding'd score matrices selected per pair + mask predicate + MatMul/Softmax"


def rerope_unsupported(args: dict) -> str | None:
    try:
        MaskSpec.parse(args["mask"])
    except ValueError as e:
        return str(e)
    return None
