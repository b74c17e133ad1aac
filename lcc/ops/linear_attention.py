"""``lcc.linear_attention``: causal kernelized attention, linear in the sequence length.

out_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / (sum_{j<=i} phi(q_i).phi(k_j) + eps)
(Katharopoulos et al. 2020, eq. 4-5).  Shapes as ``lcc.attention``: q [B, Hq, Sq, D],
k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv], GQA head h reads kv head h // (Hq // Hkv).  As in
``lcc.attention``, queries are aligned to the end of the ``kv_len`` valid keys (None: all
Sk), so decode is one query against a plain K/V cache: phi(q) . sum_{j<kv_len} phi(k_j) v_j^T
over the cache, O(kv_len) per step with no new cache layout.  ``feature_map`` is a spec string:

- ``elu``: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, Sec. 3.2).
- ``performer:features=M,seed=S``: FAVOR+ positive orthogonal random features
  (Choromanski et al. 2021, Lemma 1 and Sec. 2.4), approximating softmax(q k^T / sqrt(D)).
  The projection [M, D] is the ``projection`` input when given, else drawn
  deterministically from ``seed`` (:func:`orthogonal_random_features`).
"""

from __future__ import annotations

import functools
import math

import sympy
import torch

from lcc.ops import registry
from lcc.spec import Field
from lcc.spec import parse as parse_spec


FEATURE_MAPS = {"elu": (), "performer": (Field("features", int, 256, "random features M", low=1, high=1 << 16),
                                          Field("seed", int, 0, "seed of the orthogonal features", low=0,
                                                high=2**63 - 1))}


def parse_feature_map(feature_map: str) -> tuple[str, dict[str, int]]:
    """``elu`` or ``performer:features=M,seed=S`` -> (name, params with defaults); bad: a SpecError."""
    return parse_spec(feature_map, FEATURE_MAPS, "feature map")


@functools.lru_cache(maxsize=16)
def orthogonal_random_features(num_features: int, dim: int, seed: int = 0) -> torch.Tensor:
    """[num_features, dim] rows orthogonal in blocks of ``dim``, norms chi(dim)-distributed (Performer ORF)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-num_features // dim)):
        g = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
        blocks.append(torch.linalg.qr(g).Q.T)
    w = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=gen, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).float()


def features(x: torch.Tensor, feature_map: str, projection: torch.Tensor | None, is_query: bool,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """phi(x) in fp32: [B, H, S, F] (F = D for elu, M for performer).

    ``valid`` ([B, 1, S, 1] bool, keys only) leaves cache slots past ``kv_len`` out of the keys'
    stabilizer, so a decode step over the cache shares prefill's constant."""
    name, params = parse_feature_map(feature_map)
    x = x.float()
    if name == "elu":
        return torch.nn.functional.elu(x) + 1
    if projection is None:
        projection = orthogonal_random_features(params["features"], x.shape[-1], params["seed"])
    w = projection.to(device=x.device, dtype=torch.float32)
    x = x * x.shape[-1] ** -0.25
    wx = x @ w.T
    sq = (x * x).sum(-1, keepdim=True) / 2
    # stabilizer (Performer's softmax_kernel): a per-row max for queries cancels in the ratio;
    # keys share one max per (batch, head), a constant that cancels too (up to eps)
    if is_query:
        stab = wx.amax(-1, keepdim=True)
    else:
        stab = (wx if valid is None else wx.masked_fill(~valid, float("-inf"))).amax(dim=(-1, -2), keepdim=True)
    return torch.exp(wx - sq - stab) / math.sqrt(w.shape[0])


def _gqa(phi_k, v, groups):
    return phi_k.repeat_interleave(groups, 1), v.float().repeat_interleave(groups, 1)


def _visible(q, k, kv_len):
    """[B, 1, Sq, Sk] keys each query sees (causal, queries aligned to the end of the valid keys)
    and [B, 1, Sk, 1] the valid keys."""
    B, Sq, Sk = q.shape[0], q.shape[2], k.shape[2]
    if kv_len is None:
        n = torch.full((B, 1), Sk, device=q.device, dtype=torch.long)
    else:
        n = kv_len.to(device=q.device, dtype=torch.long).reshape(-1, 1).expand(B, 1)
    q_pos = n - Sq + torch.arange(Sq, device=q.device)[None, :]  # [B, Sq]
    kv = torch.arange(Sk, device=q.device)
    valid = kv[None, :] < n  # [B, Sk]
    seen = (kv[None, None, :] <= q_pos[:, :, None]) & valid[:, None, :]
    return seen[:, None], valid[:, None, :, None]


def linear_attention_reference(q, k, v, feature_map="elu", projection=None, eps=1e-6, kv_len=None):
    """The oracle: the masked Sq x Sk kernel matrix at once, in fp32, cast to q's dtype."""
    seen, valid = _visible(q, k, kv_len)
    phi_q = features(q, feature_map, projection, True)
    phi_k, vf = _gqa(features(k, feature_map, projection, False, valid), v, q.shape[1] // k.shape[1])
    a = (phi_q @ phi_k.transpose(-1, -2)).masked_fill(~seen, 0.0)
    return ((a @ vf) / (a.sum(-1, keepdim=True) + eps)).to(q.dtype)


def linear_attention_recurrent(q, k, v, feature_map="elu", projection=None, eps=1e-6):
    """The same output by the RNN form (Katharopoulos et al. 2020, eq. 16-20): state S_i, normalizer z_i."""
    phi_q = features(q, feature_map, projection, True)
    phi_k, vf = _gqa(features(k, feature_map, projection, False), v, q.shape[1] // k.shape[1])
    state = phi_q.new_zeros(*phi_q.shape[:2], phi_q.shape[-1], vf.shape[-1])
    z = phi_q.new_zeros(*phi_q.shape[:2], phi_q.shape[-1])
    out = []
    for i in range(q.shape[2]):
        state = state + phi_k[:, :, i, :, None] * vf[:, :, i, None, :]
        z = z + phi_k[:, :, i]
        num = (phi_q[:, :, i, :, None] * state).sum(-2)
        out.append(num / ((phi_q[:, :, i] * z).sum(-1, keepdim=True) + eps))
    return torch.stack(out, 2).to(q.dtype)


@torch.library.custom_op("lcc::linear_attention", mutates_args=())
def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: str = "elu",
    projection: torch.Tensor | None = None,
    eps: float = 1e-6,
    algo: str = "auto",
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    call = (q, k, v, feature_map, projection, eps, kv_len)
    impl = (registry.select("linear_attention", algo, q.device.type, *call)
            or registry.select("linear_attention", "reference", "*"))
    return impl.fn(*call)


@linear_attention.register_fake
def _(q, k, v, feature_map="elu", projection=None, eps=1e-6, algo="auto", kv_len=None):
    torch._check(q.shape[1] % k.shape[1] == 0)
    if kv_len is None:
        torch._check(q.shape[2] <= k.shape[2])
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


def linear_attention_cost(B, Hq, Hkv, S, D, Dv, feature_map: str = "elu", itemsize: int = 4):
    """FLOPs, bytes moved and bytes held (sympy), recurrent form: per token and head the state
    update phi(k) v^T and the read phi(q)^T S cost 2*F*Dv each, the normalizer 2*F each;
    Performer adds the projection, 2*D*F per q and k row."""
    name, params = parse_feature_map(feature_map)
    F = D if name == "elu" else params["features"]
    S = sympy.sympify(S)
    flops = B * Hq * S * (4 * F * Dv + 4 * F)
    if name == "performer":
        flops += 2 * D * F * B * S * (Hq + Hkv)
    moved = itemsize * B * S * (Hq * D + Hkv * (D + Dv) + Hq * Dv)
    held = 4 * B * Hq * F * (Dv + 1)  # the fp32 state and normalizer
    return flops, moved, held


registry.declare(registry.OpDef(
    name="linear_attention",
    op=torch.ops.lcc.linear_attention.default,
    reference=linear_attention_reference,
    cost=linear_attention_cost,
    doc="causal phi(q) phi(k)^T v / normalizer; feature maps elu+1, Performer FAVOR+; GQA native",
))


def whole_prefill(q, k, v, feature_map, projection, eps, kv_len) -> str | None:
    """The check of kernels written for a whole causal prefill (no cache offset)."""
    if kv_len is not None or q.shape[2] != k.shape[2]:
        return "decode / chunked prefill against a cache runs the O(kv_len)-per-query reference"
    return None


# Every algo on every device falls back to the reference (decode and chunked prefill need its kv_len sum).
registry.register_impl("linear_attention", registry.Impl("reference", "*", linear_attention_reference,
                                                         source=__name__))
