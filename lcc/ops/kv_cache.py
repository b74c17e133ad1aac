"""Quantized KV-cache storage and the ops that write and read it (KIVI, Liu et al. 2024; fp8 e4m3).

A quantized cache keeps, per layer and for K and V separately, the *parts*
``[codes, scale, zero, res]`` (``zero`` only for integer formats):

- ``codes`` [B, H, C, D / pack] uint8: ``bits``-bit codes packed along the head dim in natural
  order (element ``pack*i + j`` sits in bits ``j*bits`` of byte ``i``); fp8: [B, H, C, D] e4m3;
- ``scale`` / ``zero`` fp16: per channel over groups of ``group`` tokens, [B, H, ceil(C/G), D]
  (KIVI's keys), or per token over groups of ``group`` channels, [B, H, C, D/G] (values);
- ``res`` [B, H, ring, D] fp16: the most recent tokens in full precision, token t in slot t % ring.

With n tokens written, tokens [0, nq) are quantized and tokens [nq, n) live in ``res``, where
``nq = max(0, (n - residual) // block) * block`` and ``block`` is ``group`` when keys are
quantized per channel (a group of tokens must be complete before its channel statistics
exist) and 1 otherwise.  Integer codes are asymmetric: ``x ~ code * scale + zero`` with
``zero`` rounded down and ``scale`` rounded up to fp16, so every element is within scale/2.
fp8 is symmetric: ``x ~ e4m3(x / scale) * scale`` with ``scale = amax / 448`` rounded up.
Quantization always starts from the fp16-rounded value, whether the token comes from the
ring or straight from the model, so the stored cache is a function of the tokens alone.

Ops: ``lcc.kv_quant_write`` (append tokens), ``lcc.attention_kvq`` (attention that reads the
parts directly; the reference dequantizes one block of keys at a time, the Triton kernel in
registers) and ``lcc.attention_kvq_sim`` (an evaluation op: teacher-forced logits of every
position as token-by-token decoding through such a cache would give them, at prefill cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy
import torch

from lcc.ops import registry
from lcc.spec import Field
from lcc.spec import parse as parse_spec
from lcc.ops.masks import MaskSpec

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FORMATS = ("int", "fp8")
AXES = ("channel", "token")


_KV_FIELDS = (Field("group", int, 32, "elements per scale", low=1, high=1 << 16),
              Field("keys", str, "channel", "key statistics per channel or per token", choices=AXES),
              Field("residual", int, 128, "recent tokens kept in fp16", low=0, high=1 << 30))
KV_FORMATS = {"int2": _KV_FIELDS, "int4": _KV_FIELDS, "int8": _KV_FIELDS, "fp8": _KV_FIELDS}


@dataclass(frozen=True)
class KVQuantFormat:
    """One quantized-cache format, parsed once; ``str()`` gives the spec string the ops take."""

    kind: str = "int"  # "int" (asymmetric, packed) or "fp8" (e4m3, symmetric)
    bits: int = 4
    group: int = 32
    keys: str = "channel"  # key statistics per channel (KIVI) or per token; values are always per token
    residual: int = 128  # recent tokens kept in fp16

    def __post_init__(self):
        if self.kind not in FORMATS:
            raise ValueError(f"unknown kv format {self.kind!r}; use int or fp8")
        if self.kind == "int" and self.bits not in (2, 4, 8):
            raise ValueError(f"int kv quantization takes bits=8, 4 or 2, not {self.bits}")
        if self.kind == "fp8" and self.bits != 8:
            raise ValueError("fp8 is 8 bits")
        if self.keys not in AXES:
            raise ValueError(f"keys={self.keys!r}: use channel or token")
        if self.group < 1 or self.residual < 0:
            raise ValueError(f"need group >= 1 and residual >= 0, got group={self.group}, residual={self.residual}")

    @staticmethod
    def parse(text: str) -> "KVQuantFormat":
        """``int4:group=32,keys=channel,residual=128`` or ``fp8:...`` (the ``str()`` form); bad: a SpecError."""
        head, args = parse_spec(text, KV_FORMATS, "kv format")
        kind = "fp8" if head == "fp8" else "int"
        return KVQuantFormat(kind, 8 if kind == "fp8" else int(head.removeprefix("int")), **args)

    def __str__(self) -> str:
        head = "fp8" if self.kind == "fp8" else f"int{self.bits}"
        return f"{head}:group={self.group},keys={self.keys},residual={self.residual}"

    @property
    def pack(self) -> int:
        """Codes per byte."""
        return 8 // self.bits if self.kind == "int" else 1

    @property
    def block(self) -> int:
        """Tokens are moved from the ring to the quantized store this many at a time."""
        return self.group if self.keys == "channel" else 1

    @property
    def ring(self) -> int:
        return self.residual + self.block

    def n_quantized(self, n: int) -> int:
        return max(0, (n - self.residual) // self.block) * self.block

    def axis(self, which: str) -> str:
        return "channel" if which == "k" and self.keys == "channel" else "token"

    def part_specs(self, which: str, batch: int, heads: int, capacity: int, head_dim: int):
        """[(name, shape, dtype)] of one layer's K (``which="k"``) or V parts."""
        self.check_head_dim(head_dim)
        b, h, c, d, g = batch, heads, capacity, head_dim, self.group
        codes = ("codes", (b, h, c, d // self.pack), "uint8" if self.kind == "int" else "float8_e4m3fn")
        stats = (b, h, -(-c // g), d) if self.axis(which) == "channel" else (b, h, c, d // g)
        parts = [codes, ("scale", stats, "float16")]
        if self.kind == "int":
            parts.append(("zero", stats, "float16"))
        return parts + [("res", (b, h, self.ring, d), "float16")]

    def check_head_dim(self, head_dim: int) -> None:
        """Values are grouped along the head dim, and codes pack ``pack`` to a byte along it."""
        if head_dim % self.group or head_dim % self.pack:
            raise ValueError(f"head dim {head_dim} is not a multiple of group={self.group}")

    def bytes_per_token(self, head_dim: int) -> float:
        """Ideal bytes per token per head for K plus V, quantized store only (scales included)."""
        stats = 2 if self.kind == "int" else 1
        data = head_dim * self.bits / 8
        return 2 * data + 2 * stats * 2 * head_dim / self.group  # K's per-channel stats: D per G tokens


# --- quantize / dequantize (the reference every kernel is checked against) -------------------------------------


def _fp16_round(x: torch.Tensor, up: bool) -> torch.Tensor:
    """x rounded to fp16 towards +inf (``up``) or -inf, returned as fp16."""
    h = x.half()
    target = torch.full_like(h, math.inf if up else -math.inf)
    off = (h.float() < x) if up else (h.float() > x)
    return torch.where(off, torch.nextafter(h, target), h)


def _grouped(x: torch.Tensor, group: int, axis: str) -> torch.Tensor:
    """View [..., T, D] as [..., a, b, group] with the group's elements last."""
    *lead, t, d = x.shape
    if axis == "channel":  # groups of `group` tokens per channel
        return x.reshape(*lead, t // group, group, d).transpose(-1, -2)
    return x.reshape(*lead, t, d // group, group)


def _ungrouped(x: torch.Tensor, axis: str) -> torch.Tensor:
    *lead, a, b, g = x.shape
    if axis == "channel":
        return x.transpose(-1, -2).reshape(*lead, a * g, b)
    return x.reshape(*lead, a, b * g)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., D] codes < 2**bits -> [..., D * bits / 8] uint8, natural order within a byte."""
    per = 8 // bits
    if per == 1:
        return codes.to(torch.uint8)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    c = codes.to(torch.int32).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    if per == 1:
        return packed
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    c = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)
    return c.reshape(*packed.shape[:-1], packed.shape[-1] * per).to(torch.uint8)


def quantize(x: torch.Tensor, fmt: KVQuantFormat, axis: str):
    """x [..., T, D] (T a multiple of ``group`` for ``axis="channel"``) -> (codes, scale, zero or None).

    Statistics come from the fp16-rounded values; codes are packed, scale and zero are fp16 of
    shape [..., T/G, D] (channel) or [..., T, D/G] (token).
    """
    xg = _grouped(x.half().float(), fmt.group, axis)
    if fmt.kind == "fp8":
        scale = _fp16_round(xg.abs().amax(-1, keepdim=True) / FP8_MAX, up=True)
        s = scale.float()
        y = torch.where(s > 0, xg / torch.where(s > 0, s, 1.0), 0.0).clamp(-FP8_MAX, FP8_MAX)
        codes = _ungrouped(y.to(torch.float8_e4m3fn), axis)
        return codes, scale.squeeze(-1), None
    qmax = (1 << fmt.bits) - 1
    zero = _fp16_round(xg.amin(-1, keepdim=True), up=False)
    scale = _fp16_round((xg.amax(-1, keepdim=True) - zero.float()) / qmax, up=True)
    s = scale.float()
    codes = torch.where(s > 0, ((xg - zero.float()) / torch.where(s > 0, s, 1.0)).round(), 0.0).clamp(0, qmax)
    return pack_codes(_ungrouped(codes, axis), fmt.bits), scale.squeeze(-1), zero.squeeze(-1)


def _expand_stats(stat: torch.Tensor, group: int, axis: str) -> torch.Tensor:
    """Per-group statistics broadcast to one value per element, [..., T, D]."""
    return stat.float().repeat_interleave(group, dim=-2 if axis == "channel" else -1)


def dequantize(codes, scale, zero, fmt: KVQuantFormat, axis: str) -> torch.Tensor:
    """The fp32 values [..., T, D] that ``quantize`` stands for."""
    if fmt.kind == "fp8":
        return codes.float() * _expand_stats(scale, fmt.group, axis)
    c = unpack_codes(codes, fmt.bits).float()
    return c * _expand_stats(scale, fmt.group, axis) + _expand_stats(zero, fmt.group, axis)


def fake_quantize(x: torch.Tensor, fmt: KVQuantFormat, axis: str) -> torch.Tensor:
    """dequantize(quantize(x)) for x [..., T, D]; along tokens only whole groups (T a multiple of G)."""
    codes, scale, zero = quantize(x, fmt, axis)
    return dequantize(codes, scale, zero, fmt, axis)


# --- the parts of one cache tensor -------------------------------------------------------------------------------


def _split(parts, fmt: KVQuantFormat):
    if fmt.kind == "int":
        codes, scale, zero, res = parts
    else:
        (codes, scale, res), zero = parts, None
    return codes, scale, zero, res


def _join(codes, scale, zero, res, fmt: KVQuantFormat) -> list[torch.Tensor]:
    return [codes, scale, zero, res] if fmt.kind == "int" else [codes, scale, res]


def ring_tokens(lo: int, n: int, ring: int, device=None):
    """Slots of tokens lo..n-1 in a ring of ``ring`` slots."""
    return torch.arange(lo, n, device=device) % ring


def slot_tokens(nq: int, n: int, ring: int, device=None):
    """For each ring slot: the token it holds when tokens [nq, n) are in the ring, and whether it holds one."""
    s = torch.arange(ring, device=device)
    t = nq + (s - nq) % ring
    return t, t < n


def kv_quant_write_reference(parts, x, start, fmt: KVQuantFormat, which: str) -> list[torch.Tensor]:
    """Append x [B, H, S, D] at positions start.. to a cache holding ``start`` tokens (functional)."""
    codes, scale, zero, res = (p.clone() if p is not None else None for p in _split(parts, fmt))
    axis = fmt.axis(which)
    n0 = 0 if start is None else int(start)
    n1 = n0 + x.shape[2]
    nq0, nq1 = fmt.n_quantized(n0), fmt.n_quantized(n1)
    old = res.index_select(2, ring_tokens(nq0, n0, fmt.ring, x.device)).float()
    seq = torch.cat([old, x.half().float()], dim=2)  # tokens nq0 .. n1-1, fp16-exact
    if nq1 > nq0:
        c, s, z = quantize(seq[:, :, : nq1 - nq0], fmt, axis)
        codes[:, :, nq0:nq1] = c
        lo, hi = (nq0 // fmt.group, nq1 // fmt.group) if axis == "channel" else (nq0, nq1)
        scale[:, :, lo:hi] = s
        if z is not None:
            zero[:, :, lo:hi] = z
    res.index_copy_(2, ring_tokens(nq1, n1, fmt.ring, x.device), seq[:, :, nq1 - nq0:].to(res.dtype))
    return _join(codes, scale, zero, res, fmt)


@torch.library.custom_op("lcc::kv_quant_write", mutates_args=())
def kv_quant_write(parts: list[torch.Tensor], x: torch.Tensor, start: torch.Tensor | None, fmt: str,
                   which: str) -> list[torch.Tensor]:
    return kv_quant_write_reference(parts, x, start, KVQuantFormat.parse(fmt), which)


@kv_quant_write.register_fake
def _(parts, x, start, fmt, which):
    return [torch.empty_like(p) for p in parts]


# --- attention over the quantized cache --------------------------------------------------------------------------

_BLOCK = 1024  # tokens dequantized at a time by the reference


def _dequant_block(parts, fmt: KVQuantFormat, which: str, lo: int, hi: int) -> torch.Tensor:
    """fp32 values of quantized tokens [lo, hi) (whole groups along tokens for per-channel statistics)."""
    codes, scale, zero, _ = _split(parts, fmt)
    axis = fmt.axis(which)
    a, b = (lo // fmt.group, hi // fmt.group) if axis == "channel" else (lo, hi)
    return dequantize(codes[:, :, lo:hi], scale[:, :, a:b], None if zero is None else zero[:, :, a:b], fmt, axis)


class _OnlineSoftmax:
    """Running (max, sum, acc) of softmax(q k^T) v over key blocks, in fp32 (Milakov & Gimelshein 2018)."""

    def __init__(self, q, scale, q_pos, mask_mod):
        B, Hq, Sq, D = q.shape
        self.q, self.scale, self.q_pos, self.mask_mod = q.float(), scale, q_pos, mask_mod
        self.m = torch.full((B, Hq, Sq, 1), -math.inf, device=q.device)
        self.l = torch.zeros(B, Hq, Sq, 1, device=q.device)
        self.acc = None

    def update(self, k, v, kv_idx, valid=None):
        B, Hq, Sq, D = self.q.shape
        Hkv = k.shape[1]
        qg = self.q.reshape(B, Hkv, Hq // Hkv, Sq, D)
        s = torch.matmul(qg, k[:, :, None].transpose(-1, -2)).reshape(B, Hq, Sq, -1) * self.scale
        allowed = self.mask_mod(self.q_pos[:, None], kv_idx[None, :])
        if valid is not None:
            allowed = allowed & valid[None, :]
        s = s.masked_fill(~allowed, -math.inf)
        m_new = torch.maximum(self.m, s.amax(-1, keepdim=True))
        m_safe = torch.where(torch.isinf(m_new), 0.0, m_new)
        p = torch.exp(s - m_safe)
        alpha = torch.exp(self.m - m_safe)
        pv = torch.matmul(p.reshape(B, Hkv, Hq // Hkv, Sq, -1), v[:, :, None]).reshape(B, Hq, Sq, -1)
        self.acc = pv if self.acc is None else self.acc * alpha + pv
        self.l = self.l * alpha + p.sum(-1, keepdim=True)
        self.m = m_new

    def result(self, dv: int):
        if self.acc is None:
            return torch.zeros(*self.q.shape[:3], dv, device=self.q.device)
        return self.acc / torch.where(self.l == 0, 1.0, self.l)


def attention_kvq_reference(q, k_parts, v_parts, kv_len, scale, mask, fmt, block: int = _BLOCK):
    """``lcc.attention`` over a quantized cache holding ``kv_len`` tokens; queries aligned to its end.

    Reads the parts directly: ``block`` tokens of K and V are dequantized at a time (never the
    whole cache), then the fp16 ring; an online softmax joins the pieces.
    """
    fmt = KVQuantFormat.parse(fmt) if isinstance(fmt, str) else fmt
    Sq = q.shape[2]
    n = k_parts[0].shape[2] if kv_len is None else int(kv_len.reshape(-1)[0])
    nq = fmt.n_quantized(n)
    spec = MaskSpec.parse(mask)
    q_pos = n - Sq + torch.arange(Sq, device=q.device)
    state = _OnlineSoftmax(q, scale, q_pos, spec.mask_mod())
    block = max(fmt.group, block // fmt.group * fmt.group)
    ranges = spec.key_ranges(int(q_pos.min()), int(q_pos.max()), n)
    for lo in range(0, nq, block):
        hi = min(nq, lo + block)
        if not any(a < hi and b > lo for a, b in ranges):
            continue
        k = _dequant_block(k_parts, fmt, "k", lo, hi)
        v = _dequant_block(v_parts, fmt, "v", lo, hi)
        state.update(k, v, torch.arange(lo, hi, device=q.device))
    t, valid = slot_tokens(nq, n, fmt.ring, q.device)
    state.update(k_parts[-1].float(), v_parts[-1].float(), t, valid)
    return state.result(v_parts[-1].shape[-1]).to(q.dtype)


@torch.library.custom_op("lcc::attention_kvq", mutates_args=())
def attention_kvq(q: torch.Tensor, k_parts: list[torch.Tensor], v_parts: list[torch.Tensor],
                  kv_len: torch.Tensor | None, scale: float, mask: str, fmt: str, algo: str = "auto") -> torch.Tensor:
    call = (q, k_parts, v_parts, kv_len, scale, mask, fmt)
    impl = (registry.select("attention_kvq", algo, q.device.type, *call)
            or registry.select("attention_kvq", "reference", "*"))
    return impl.fn(*call)


@attention_kvq.register_fake
def _(q, k_parts, v_parts, kv_len, scale, mask, fmt, algo="auto"):
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v_parts[-1].shape[3])


# --- evaluation: decode-equivalent attention at prefill cost -----------------------------------------------------


def attention_kvq_sim_reference(q, k, v, scale, mask, fmt, chunk: int = 256):
    """Causal attention where query i reads key j as a decode step at position i would find it in the cache.

    That is: dequantized if j < nq(i + 1), the fp16 value otherwise (the ring).  Fresh q, k, v
    [B, H, S, D] of a prefill; the result equals decoding token by token through
    ``kv_quant_write`` + ``attention_kvq`` (teacher forcing), which the tests check.
    """
    fmt = KVQuantFormat.parse(fmt) if isinstance(fmt, str) else fmt
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    whole = fmt.n_quantized(S)  # whole groups when keys are per channel
    kh, vh = k.half().float(), v.half().float()
    kq, vq = kh.clone(), vh.clone()
    if whole:
        kq[:, :, :whole] = fake_quantize(k[:, :, :whole], fmt, fmt.axis("k"))
        vq[:, :, :whole] = fake_quantize(v[:, :, :whole], fmt, fmt.axis("v"))
    mask_mod = MaskSpec.parse(mask).mask_mod()
    out = q.new_empty(B, Hq, S, v.shape[-1])
    qf = q.float().reshape(B, Hkv, Hq // Hkv, S, D)
    nq_of = torch.tensor([fmt.n_quantized(i + 1) for i in range(S)], device=q.device)
    for s in range(0, S, chunk):
        e = min(S, s + chunk)
        qi = torch.arange(s, e, device=q.device)
        kj = torch.arange(e, device=q.device)
        quant = kj[None, :] < nq_of[s:e, None]  # [rows, keys]: read from the quantized store
        sq = torch.matmul(qf[:, :, :, s:e], kq[:, :, None, :e].transpose(-1, -2))
        sh = torch.matmul(qf[:, :, :, s:e], kh[:, :, None, :e].transpose(-1, -2))
        scores = torch.where(quant, sq, sh) * scale
        scores = scores.masked_fill(~mask_mod(qi[:, None], kj[None, :]), -math.inf)
        p = torch.softmax(scores, -1).nan_to_num_(0.0)
        o = torch.matmul(p * quant, vq[:, :, None, :e]) + torch.matmul(p * ~quant, vh[:, :, None, :e])
        out[:, :, s:e] = o.reshape(B, Hq, e - s, -1).to(q.dtype)
    return out


@torch.library.custom_op("lcc::attention_kvq_sim", mutates_args=())
def attention_kvq_sim(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: str,
                      fmt: str) -> torch.Tensor:
    return attention_kvq_sim_reference(q, k, v, scale, mask, fmt)


@attention_kvq_sim.register_fake
def _(q, k, v, scale, mask, fmt):
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


# --- cost ----------------------------------------------------------------------------------------------------------


def cache_bytes(fmt: KVQuantFormat, B, Hkv, Sk, D):
    """Bytes of one layer's quantized K plus V holding Sk tokens (sympy), scales and ring included."""
    Sk = sympy.sympify(Sk)
    return B * Hkv * (fmt.bytes_per_token(D) * Sk + 2 * 2 * fmt.ring * D)


def attention_kvq_cost(B, Hq, Hkv, Sq, Sk, D, Dv, mask: str, fmt: str, itemsize: int = 4):
    """FLOPs as ``lcc.attention`` plus one multiply-add per dequantized element; bytes: the stored cache."""
    from lcc.ops.attention import mask_pairs

    f = KVQuantFormat.parse(fmt)
    pairs = mask_pairs(mask, Sq, Sk)
    flops = pairs * B * Hq * (2 * D + 2 * Dv) + 2 * B * Hkv * sympy.sympify(Sk) * (D + Dv)
    moved = itemsize * B * Hq * Sq * (D + Dv) + cache_bytes(f, B, Hkv, Sk, D)
    held = itemsize * B * Hq * Sq * Dv
    return flops, moved, held


def kv_quant_write_cost(B, Hkv, S, D, fmt: str):
    """Quantizing S tokens: a few FLOPs per element; bytes: the tokens read, their codes written."""
    f = KVQuantFormat.parse(fmt)
    flops = 6 * B * Hkv * S * D
    moved = B * Hkv * S * (4 * D + f.bytes_per_token(D) / 2)
    return flops, moved, 0


registry.declare(registry.OpDef(
    name="attention_kvq", op=torch.ops.lcc.attention_kvq.default, reference=attention_kvq_reference,
    cost=attention_kvq_cost,
    doc="lcc.attention reading a quantized KV cache (KIVI int8/4/2 or fp8) plus its fp16 residual ring"))
# Every algo on every device falls back to the reference; kernels (Triton decode on cuda) add theirs.
registry.register_impl("attention_kvq", registry.Impl("reference", "*", attention_kvq_reference, source=__name__))
registry.declare(registry.OpDef(
    name="kv_quant_write", op=torch.ops.lcc.kv_quant_write.default, reference=kv_quant_write_reference,
    cost=kv_quant_write_cost, doc="append tokens to a quantized KV cache (functional)"))
registry.declare(registry.OpDef(
    name="attention_kvq_sim", op=torch.ops.lcc.attention_kvq_sim.default, reference=attention_kvq_sim_reference,
    cost=None, doc="evaluation: causal attention as decoding through a quantized cache would see it"))
