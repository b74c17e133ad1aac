"""Block-sparse attention patterns as mask predicates, with their block maps and pair counts.

Every pattern here is causal and is one *portable* predicate ``<kind>_mod(q, kv, *args)``
written with operators only (``& | < <= == // %``), so the very same function runs on
torch tensors (the reference, the block map, the counts' tests) and, wrapped with
``triton.jit`` by the Triton backend, inside the kernel on a tile.  ``KERNEL_MODS`` maps
each kind to that function and to the integer arguments it takes.

Kinds (``q``/``kv`` are absolute positions, queries aligned to the end of the keys):

- ``block-local:block=B,blocks=N``: a query in block ``q//B`` sees blocks
  ``q//B - N + 1 .. q//B`` (BlockBERT, Qiu et al. 2020, made causal).
- ``strided:stride=L,block=b``: the last ``L`` positions plus every ``L``-th one before
  (Sparse Transformer, Child et al. 2019, Sec. 4.2, both heads' sets merged); with
  ``block=b > 1`` the rule applies to blocks of ``b`` positions, as in their block-sparse kernels.
- ``fixed:stride=L,c=C,block=b``: the query's own group of ``L`` (blocks) plus the last ``C``
  of every earlier group (Child et al. 2019, "fixed" pattern).
- ``dilated:segment=w,rate=r,levels=n,growth=g``: LongNet's dilated attention (Ding et al.
  2023): level ``i`` splits positions into segments of ``w*g^i`` and keeps every ``r*g^i``-th
  position of each; a pair is kept if some level keeps both (the union of levels).
- ``global-local:globals=G,window=W,every=E``: a local window of ``W`` plus global tokens,
  the first ``G`` and (``E > 0``) every ``E``-th, that see and are seen by everything
  earlier (Longformer, Beltagy et al. 2020; ETC, Ainslie et al. 2020).
"""

from __future__ import annotations

import functools

import sympy
import torch

from lcc.ops import registry
from lcc.ops.masks import MaskKind, MaskSpec, register_mask


# ---- portable predicates: operators only, valid on torch tensors and inside @triton.jit ----

def full_mod(q, kv):
    return (q >= kv) | (q < kv)


def causal_mod(q, kv):
    return kv <= q


def sliding_mod(q, kv, window, sinks):
    return (kv <= q) & ((q - kv < window) | (kv < sinks))


def block_local_mod(q, kv, block, blocks):
    return (kv <= q) & (q // block - kv // block < blocks)


def strided_mod(q, kv, stride, block):
    return (kv <= q) & ((q // block - kv // block < stride) | ((q // block - kv // block) % stride == 0))


def fixed_mod(q, kv, stride, c, block):
    group = stride * block
    return (kv <= q) & ((q // group == kv // group) | ((kv // block) % stride >= stride - c))


def dilated_mod(q, kv, segment, rate, levels, growth):
    allowed = (q < 0) & (kv < 0)
    w = segment
    r = rate
    for _ in range(levels):
        allowed = allowed | ((q // w == kv // w) & ((q % w) % r == 0) & ((kv % w) % r == 0))
        w = w * growth
        r = r * growth
    return allowed & (kv <= q)


def global_local_mod(q, kv, globals_, window, every, every_on):
    q_global = (q < globals_) | (((q % every) == 0) & (every_on > 0))
    kv_global = (kv < globals_) | (((kv % every) == 0) & (every_on > 0))
    return (kv <= q) & ((q - kv < window) | kv_global | q_global)


# kind -> (portable predicate, params dict -> the predicate's integer arguments)
KERNEL_MODS = {
    "full": (full_mod, lambda: ()),
    "causal": (causal_mod, lambda: ()),
    "sliding": (sliding_mod, lambda window, sinks: (window, sinks)),
    "block-local": (block_local_mod, lambda block, blocks: (block, blocks)),
    "strided": (strided_mod, lambda stride, block: (stride, block)),
    "fixed": (fixed_mod, lambda stride, c, block: (stride, c, block)),
    "dilated": (dilated_mod, lambda segment, rate, levels, growth: (segment, rate, levels, growth)),
    "global-local": (global_local_mod, lambda globals, window, every: (globals, window, max(every, 1), int(every > 0))),
}


def kernel_mod(mask: str | MaskSpec):
    """(portable predicate, its integer arguments) for a mask spec."""
    spec = MaskSpec.parse(mask) if isinstance(mask, str) else mask
    fn, args = KERNEL_MODS[spec.kind]
    return fn, tuple(int(a) for a in args(**spec.args))


def _check(kind, **p):
    positive = {"block-local": ("block", "blocks"), "strided": ("stride", "block"), "fixed": ("stride", "block"),
                "dilated": ("segment", "rate", "levels", "growth"), "global-local": ("window",)}[kind]
    bad = [n for n in positive if p[n] < 1]
    if bad:
        raise ValueError(f"{kind}: {', '.join(bad)} must be >= 1")
    if kind == "dilated" and p["segment"] % p["rate"]:
        raise ValueError("dilated: segment must be a multiple of rate")


def _factory(kind):
    def make(**params):
        _check(kind, **params)
        fn, args = KERNEL_MODS[kind]
        values = args(**params)
        return lambda q, kv: fn(q, kv, *values)

    return make


for _kind, _params, _doc in [
    ("block-local", {"block": 512, "blocks": 2},
     "causal; own block of `block` plus the previous `blocks`-1 (BlockBERT)"),
    ("strided", {"stride": 128, "block": 1}, "causal; last `stride` plus every `stride`-th (Sparse Transformer)"),
    ("fixed", {"stride": 128, "c": 8, "block": 1}, "causal; own group of `stride` plus last `c` of each earlier group"),
    ("dilated", {"segment": 2048, "rate": 1, "levels": 2, "growth": 2},
     "causal; union of LongNet levels, segment*growth^i with dilation rate*growth^i"),
    ("global-local", {"globals": 4, "window": 4096, "every": 0},
     "causal; local `window` plus global tokens (first `globals`, every `every`-th) (Longformer/ETC)"),
]:
    register_mask(MaskKind(_kind, _params, _factory(_kind), _doc))


# ---- block maps, derived from the predicate ----

@functools.lru_cache(maxsize=64)
def block_map(mask: str, q_len: int, kv_len: int, block_m: int, block_n: int, device: str = "cpu",
              max_elems: int = 1 << 24):
    """(any, full): [cdiv(q_len, block_m), cdiv(kv_len, block_n)] bool maps of query x key tiles.

    ``any`` marks tiles holding at least one allowed (valid query, valid key) pair, ``full``
    tiles whose every pair is allowed and every key valid (< kv_len), so a kernel may skip
    masking there.  Evaluates the mask's predicate on every pair, a few query blocks at a time.
    """
    mod = MaskSpec.parse(mask).mask_mod()
    n_m, n_n = -(-q_len // block_m), -(-kv_len // block_n)
    kv = torch.arange(n_n * block_n, device=device)
    kv_ok = kv < kv_len
    any_map = torch.zeros(n_m, n_n, dtype=torch.bool, device=device)
    full_map = torch.zeros_like(any_map)
    step = max(1, max_elems // (block_m * n_n * block_n))
    for m0 in range(0, n_m, step):
        m1 = min(n_m, m0 + step)
        i = torch.arange(m0 * block_m, m1 * block_m, device=device)
        q = kv_len - q_len + i
        allowed = (mod(q[:, None], kv[None, :]) & kv_ok[None, :]).expand(len(i), len(kv))
        allowed = allowed.reshape(m1 - m0, block_m, n_n, block_n)
        q_ok = (i < q_len).reshape(m1 - m0, block_m, 1, 1)
        any_map[m0:m1] = (allowed & q_ok).any(3).any(1)
        full_map[m0:m1] = (allowed | ~q_ok).all(3).all(1)
    return any_map, full_map


# ---- pair counts for the cost model ----

def _row_counts(kind: str, p: torch.Tensor, a: dict) -> torch.Tensor:
    """Exact number of keys each query at absolute position p keeps (int64, vectorised)."""
    if kind == "block-local":
        lo = ((p // a["block"] - a["blocks"] + 1) * a["block"]).clamp(min=0)
        return p - lo + 1
    if kind == "strided":
        b, l = a["block"], a["stride"]
        qb = p // b
        return p - (qb - l + 1).clamp(min=0) * b + 1 + (qb // l) * b
    if kind == "fixed":
        b, l, c = a["block"], a["stride"], a["c"]
        groups = p // (l * b)
        return p - groups * l * b + 1 + groups * min(max(c, 0), l) * b
    if kind == "dilated":
        # levels nest (segments and rates divide the next ones), so the union splits into bands:
        # keys in [start_i, start_{i-1}) are reachable from level i on, and kept iff j % r_i == 0.
        total, end, active = torch.zeros_like(p), p.clone(), torch.ones_like(p, dtype=torch.bool)
        w, r = a["segment"], a["rate"]
        for _ in range(a["levels"]):
            active = active & (p % r == 0)
            start = (p // w) * w
            band = (end // r - (start - 1) // r).clamp(min=0)
            total += torch.where(active & (end >= start), band, 0)
            end = torch.minimum(end, start - 1)
            w, r = w * a["growth"], r * a["growth"]
        return total
    if kind == "global-local":
        g, w, e = a["globals"], a["window"], a["every"]
        is_global = (p < g) | ((p % max(e, 1) == 0) & (e > 0))
        far = p - w  # keys 0..far lie outside the window
        extra = torch.clamp(torch.minimum(far + 1, torch.full_like(p, g)), min=0)
        if e > 0:
            extra += torch.where(far >= g, far // e - (g - 1) // e, 0)
        return torch.where(is_global, p + 1, torch.minimum(p + 1, torch.full_like(p, w)) + extra)
    raise KeyError(kind)


def _approx_pairs(kind: str, a: dict, Sq, Sk):
    """A sympy estimate of kept pairs for symbolic lengths (mean key position Sk - Sq/2)."""
    mean_p = Sk - Sq / 2
    if kind == "block-local":
        per_row = (a["blocks"] - 1) * a["block"] + sympy.Rational(a["block"] + 1, 2)
    elif kind == "strided":
        per_row = a["stride"] * a["block"] + mean_p / a["stride"]
    elif kind == "fixed":
        per_row = sympy.Rational(a["stride"] * a["block"] + 1, 2) + mean_p * min(a["c"], a["stride"]) / a["stride"]
    elif kind == "dilated":
        # level i adds the band of its segment outside level i-1's, every r_i-th key, for 1/r_i of the rows
        w = [a["segment"] * a["growth"] ** i for i in range(a["levels"])]
        r = [a["rate"] * a["growth"] ** i for i in range(a["levels"])]
        per_row = sympy.Rational(1, 2 * r[0]) + sum(sympy.Rational(w[i] - (w[i - 1] if i else 0), 2 * r[i] ** 2)
                                                    for i in range(a["levels"]))
    else:  # global-local: window, global keys, and the 1/every rows that are global queries
        per_row = a["window"] + a["globals"] + (2 * mean_p / a["every"] if a["every"] > 0 else 0)
    return sympy.Min(Sq * Sk - Sq * (Sq - 1) / 2, Sq * per_row)


def mask_pairs(spec: MaskSpec, Sq, Sk):
    """Kept (query, key) pairs: exact (an Integer) for numeric lengths, a sympy estimate otherwise."""
    Sq, Sk = sympy.sympify(Sq), sympy.sympify(Sk)
    if not (Sq.is_number and Sk.is_number):
        return _approx_pairs(spec.kind, spec.args, Sq, Sk)
    sq, sk = int(Sq), int(Sk)
    p = torch.arange(sk - sq, sk, dtype=torch.int64)
    return sympy.Integer(int(_row_counts(spec.kind, p, spec.args).sum()))


registry._mask_pairs = {**getattr(registry, "_mask_pairs", {}),
                        **{k: mask_pairs for k in ("block-local", "strided", "fixed", "dilated", "global-local")}}
