"""Context-parallel ops: a sequence split over the ranks of the default torch.distributed group.

Prefill shards the prompt (:func:`shard_positions`): ``head-tail`` gives rank r chunks r and
2N-1-r of 2N equal chunks so causal work is even (Striped/ring attention's zig-zag), ``contiguous``
gives it chunk r of N; the prompt is padded to a multiple of the chunk count with tokens at
positions >= S, which causality hides from every real query.  ``cp_attention`` all-gathers K/V
(``torch.distributed._functional_collectives``) and runs each local chunk as one ``lcc.attention``
call against the keys up to its end, so the exact algorithms and masks (sliding window, sinks)
are those of the single-device op.  Decode keeps each rank's own tokens in its cache with a
position code per slot (position + 1; 0 empty, -1 padding); the new token's K/V go to rank
``position % N`` (round-robin), every rank attends over its shard and the partial outputs merge
by their log-sum-exp (flash-decoding across ranks, Dao et al. 2023).
"""

from __future__ import annotations

import math

import torch

from lcc.ops import registry
from lcc.ops.masks import MaskSpec, mask_pairs

BALANCES = ("head-tail", "contiguous")
EMPTY, PAD = 0, -1  # position codes of a cache slot never written, and of a padding token's slot


def chunks_per_rank(balance: str) -> int:
    if balance not in BALANCES:
        raise ValueError(f"balance {balance!r}: one of {', '.join(BALANCES)}")
    return 2 if balance == "head-tail" else 1


def local_len(seq, ranks: int, balance: str):
    """Tokens each rank holds for a prompt of ``seq`` tokens (padding included); works on SymInts."""
    per = chunks_per_rank(balance)
    return (seq + per * ranks - 1) // (per * ranks) * per


def shard_positions(seq: int, ranks: int, balance: str) -> torch.Tensor:
    """[ranks, local_len] absolute positions of the tokens rank r holds, in its local order."""
    per = chunks_per_rank(balance)
    chunk = local_len(seq, ranks, balance) // per
    order = [[r] if per == 1 else [r, 2 * ranks - 1 - r] for r in range(ranks)]
    return torch.stack([torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for c in cs]) for cs in order])


def world(ranks: int):
    """The default process group, checked to have ``ranks`` members."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"a context-parallel program runs in {ranks} processes under torch.distributed "
                           f"(lcc run launches them; or torchrun --nproc-per-node {ranks})")
    if dist.get_world_size() != ranks:
        raise RuntimeError(f"this program was compiled for {ranks} ranks but runs in a group of "
                           f"{dist.get_world_size()}")
    return dist.group.WORLD


def all_gather(x: torch.Tensor, ranks: int, dim: int = 0) -> torch.Tensor:
    """``x`` of every rank concatenated along ``dim`` in rank order (a functional all-gather)."""
    from torch.distributed import _functional_collectives as funcol

    group = world(ranks)
    if dim != 0:  # the functional all-gather concatenates along dim 0 only
        return all_gather(x.movedim(dim, 0), ranks).movedim(0, dim)
    out = funcol.all_gather_single(x.contiguous(), 0, group)
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


def _rank(ranks: int) -> int:
    import torch.distributed as dist

    world(ranks)
    return dist.get_rank()


# --- prefill -----------------------------------------------------------------------------------------------------


def shard_reference(input_ids: torch.Tensor, ranks: int,
                    balance: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's tokens [B, Sl], their positions [B, Sl] and cache codes [B, Sl] (padding: id 0, code -1)."""
    B, S = input_ids.shape
    pos = shard_positions(S, ranks, balance)[_rank(ranks)].to(input_ids.device)
    ids = torch.zeros(B, pos.numel(), dtype=input_ids.dtype, device=input_ids.device)
    real = pos < S
    ids[:, real] = input_ids[:, pos[real]]
    codes = torch.where(real, pos + 1, torch.full_like(pos, PAD))
    return ids, pos.expand(B, -1).clone(), codes.expand(B, -1).clone()


cp_shard = torch.library.custom_op("lcc::cp_shard", shard_reference, mutates_args=())


@cp_shard.register_fake
def _(input_ids, ranks, balance):
    B, S = input_ids.shape
    sl = local_len(S, ranks, balance)
    return (input_ids.new_empty(B, sl), input_ids.new_empty(B, sl, dtype=torch.long),
            input_ids.new_empty(B, sl, dtype=torch.long))


def to_global(x: torch.Tensor, seq: int, ranks: int, balance: str, dim: int) -> torch.Tensor:
    """Every rank's shard of ``x`` along ``dim`` (all-gathered) in position order, padding kept."""
    gathered = all_gather(x, ranks, dim)
    order = torch.argsort(shard_positions(seq, ranks, balance).reshape(-1)).to(x.device)
    return gathered.index_select(dim, order)


def gather_seq_reference(x: torch.Tensor, input_ids: torch.Tensor, dim: int, ranks: int, balance: str) -> torch.Tensor:
    """The whole prompt's ``x`` along ``dim`` (shards gathered, padding dropped): every rank gets the same."""
    S = input_ids.shape[1]
    return to_global(x, S, ranks, balance, dim).narrow(dim, 0, S).contiguous()


cp_gather_seq = torch.library.custom_op("lcc::cp_gather_seq", gather_seq_reference, mutates_args=())


@cp_gather_seq.register_fake
def _(x, input_ids, dim, ranks, balance):
    shape = list(x.shape)
    shape[dim] = input_ids.shape[1]
    return x.new_empty(shape)


def last_owner(seq: int, ranks: int, balance: str) -> tuple[int, int]:
    """(rank, local index) holding position ``seq - 1``, the prompt's last token, in the shard layout."""
    pos = shard_positions(seq, ranks, balance)
    flat = int((pos.reshape(-1) == seq - 1).nonzero()[0])
    return divmod(flat, pos.shape[1])


def gather_last_reference(x: torch.Tensor, input_ids: torch.Tensor, dim: int, ranks: int,
                          balance: str) -> torch.Tensor:
    """The prompt's last position of ``x`` along ``dim`` (size 1 there), on every rank: each rank all-gathers one
    row (its own at that position if it holds it, else its first) and keeps the owner's.  What ``prefill``
    needs before the LM head, at N rows of traffic instead of the whole sequence :func:`gather_seq_reference`
    would gather (L x hidden per rank: 16 GB for a 4096-wide model at 1M tokens in fp32)."""
    owner, index = last_owner(input_ids.shape[1], ranks, balance)
    row = x.narrow(dim, index if _rank(ranks) == owner else 0, 1)
    return all_gather(row, ranks, dim).narrow(dim, owner, 1).contiguous()


cp_gather_last = torch.library.custom_op("lcc::cp_gather_last", gather_last_reference, mutates_args=())


@cp_gather_last.register_fake
def _(x, input_ids, dim, ranks, balance):
    shape = list(x.shape)
    shape[dim] = 1
    return x.new_empty(shape)


def cp_attention_reference(q, k, v, scale, mask="causal", algo="auto", softcap=0.0, ranks=2, balance="head-tail",
                           attend=None):
    """Gather K/V, restore position order, then each local chunk attends to the keys up to its end."""
    attend = attend or (lambda *a: torch.ops.lcc.attention(*a))
    per = chunks_per_rank(balance)
    chunk = q.shape[2] // per
    seq = chunk * per * ranks
    kg = to_global(k, seq, ranks, balance, 2)
    vg = to_global(v, seq, ranks, balance, 2)
    starts = shard_positions(seq, ranks, balance)[_rank(ranks)][::chunk].tolist()
    outs = []
    for j, start in enumerate(starts):
        end = start + chunk
        outs.append(attend(q[:, :, j * chunk:(j + 1) * chunk].contiguous(), kg[:, :, :end], vg[:, :, :end], None,
                           scale, mask, algo, softcap))
    return torch.cat(outs, 2)


@torch.library.custom_op("lcc::cp_attention", mutates_args=())
def cp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: str, algo: str,
                 softcap: float, ranks: int, balance: str) -> torch.Tensor:
    """Prefill attention of this rank's queries (see :func:`cp_attention_reference`)."""
    return cp_attention_reference(q, k, v, scale, mask, algo, softcap, ranks, balance)


@cp_attention.register_fake
def _(q, k, v, scale, mask, algo, softcap, ranks, balance):
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


# --- decode ------------------------------------------------------------------------------------------------------


def decode_slot_reference(position: torch.Tensor, codes: torch.Tensor, ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where this rank writes the new token: its next free slot if it owns ``position`` (position % ranks),
    else the spare last slot; and the code stored there ([1], [B, 1])."""
    B, cap = codes.shape
    mine = int(position) % ranks == _rank(ranks)
    filled = int((codes[0, :cap - 1] != EMPTY).sum())
    if mine and filled >= cap - 1:
        raise RuntimeError(f"context-parallel cache full on this rank ({cap - 1} slots)")
    slot = torch.tensor([filled if mine else cap - 1], device=codes.device)
    code = torch.full((B, 1), int(position) + 1 if mine else PAD, dtype=codes.dtype, device=codes.device)
    return slot, code


cp_decode_slot = torch.library.custom_op("lcc::cp_decode_slot", decode_slot_reference, mutates_args=())


@cp_decode_slot.register_fake
def _(position, codes, ranks):
    return codes.new_empty(1), codes.new_empty(codes.shape[0], 1)


def partial_attention(q, k, v, codes, position, scale, mask, softcap=0.0):
    """One decode query against this rank's slots: (out [B, Hq, 1, Dv] fp32, lse [B, Hq, 1] fp32)."""
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    scores = torch.matmul(q.float().reshape(B, Hkv, G, D), k.float().transpose(-1, -2)) * scale  # [B,Hkv,G,K]
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    key_pos = codes - 1  # [B, K]
    q_pos = position.reshape(1, 1).expand(B, 1)
    allowed = (codes > 0) & MaskSpec.parse(mask).mask_mod()(q_pos, key_pos)
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, -1)  # [B,Hkv,G]; -inf where no key is visible here
    probs = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None]).nan_to_num(0.0)
    out = torch.matmul(probs, v.float())  # [B,Hkv,G,Dv]
    return out.reshape(B, Hq, 1, v.shape[-1]), lse.reshape(B, Hq, 1)


def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """Merge per-rank partial outputs [N, B, H, 1, Dv] by their log-sum-exp [N, B, H, 1]."""
    m = lses.max(0).values.nan_to_num(neginf=0.0)
    w = torch.exp(lses - m).nan_to_num(0.0)  # [N,B,H,1]
    return (w[..., None] * outs).sum(0) / w.sum(0).clamp_min(torch.finfo(w.dtype).tiny)[..., None]


def decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, codes: torch.Tensor,
                        position: torch.Tensor, scale: float, mask: str, softcap: float, ranks: int) -> torch.Tensor:
    """Flash-decoding across ranks: each rank's partial attention, all-gathered and merged by log-sum-exp."""
    out, lse = partial_attention(q, k, v, codes, position, scale, mask, softcap)
    outs = all_gather(out[None], ranks, 0)
    lses = all_gather(lse[None], ranks, 0)
    return merge_partials(outs, lses).to(q.dtype)


cp_decode_attention = torch.library.custom_op("lcc::cp_decode_attention", decode_attention_reference, mutates_args=())


@cp_decode_attention.register_fake
def _(q, k, v, codes, position, scale, mask, softcap, ranks):
    return q.new_empty(q.shape[0], q.shape[1], 1, v.shape[3])


# --- cost ---------------------------------------------------------------------------------------------------------
# Per rank, as sympy expressions: (FLOPs, bytes moved through memory, bytes held while the op runs).  The attention
# ops bind the vocabulary's shape roles (B, Hq, Hkv, Sq, Sk, D, Dv: Sq and Sk this rank's tokens or cache slots);
# the others take the shapes of their tensor arguments by name.  Bytes over the link: lcc.cost.comm.


def busiest_chunk_ends(chunk, ranks: int, balance: str) -> list:
    """Key ends of the chunks rank N - 1 holds (chunks N - 1 and N head-tail, N - 1 contiguous): the rank with the
    most pairs under a causal mask, or a window's, and every rank's share head-tail (1/N of the causal pairs)."""
    return [ranks * chunk] if chunks_per_rank(balance) == 1 else [ranks * chunk, (ranks + 1) * chunk]


def gather_traffic(B, Hq, Hkv, Sq, Sk, D, Dv, ranks: int, itemsize: int = 4):
    """(bytes moved, bytes held) of ``cp_attention`` around its attention calls: this rank's K/V read and sent,
    the gathered K/V written by the all-gather, put in position order and read back, the chunks' outputs
    concatenated; held: the gathered K/V."""
    gathered = itemsize * B * Hkv * ranks * Sk * (D + Dv)
    return itemsize * (B * Hkv * Sk * (D + Dv) + 2 * B * Hq * Sq * Dv) + 3 * gathered, gathered


def cp_attention_cost(B, Hq, Hkv, Sq, Sk, D, Dv, mask: str, ranks: int, balance: str, itemsize: int = 4):
    """Each local chunk's pairs against the keys up to its end (the busiest rank), the IO of one IO-aware call per
    chunk plus the gathered K/V written by the all-gather and put in position order, and the chunks' outputs
    concatenated; held: the gathered K/V.  The op's work as an IO-aware kernel does it, whatever its ``algo``:
    the planner prices the algo that runs (``lcc.cost.ops.cp_attention_rule``), as ``attention_cost`` and
    ``attention_rule`` do for ``lcc.attention``."""
    per = chunks_per_rank(balance)
    chunk, key_chunk = Sq / per, Sk / per
    ends = busiest_chunk_ends(key_chunk, ranks, balance)
    pairs = sum(mask_pairs(mask, chunk, end) for end in ends)
    flops = pairs * B * Hq * (2 * D + 2 * Dv)
    around, gathered = gather_traffic(B, Hq, Hkv, Sq, Sk, D, Dv, ranks, itemsize)
    moved = itemsize * B * (Hq * Sq * D + Hkv * sum(ends) * (D + Dv) + Hq * Sq * Dv) + around
    return flops, moved, gathered


def cp_decode_attention_cost(B, Hq, Hkv, Sk, D, Dv, ranks: int, itemsize: int = 4):
    """One query per head against this rank's Sk slots in fp32 (each slot's position code read), then the N
    partial outputs and log-sum-exps (fp32, gathered) merged; held: the fp32 scores and the gathered partials."""
    partials = 4 * ranks * B * Hq * (Dv + 1)
    flops = B * Hq * Sk * (2 * D + 2 * Dv) + 6 * ranks * B * Hq * (Dv + 1)
    moved = itemsize * B * (Hq * D + Hkv * Sk * (D + Dv) + Hq * Dv) + 8 * B * Sk + 2 * partials
    return flops, moved, 4 * B * Hq * Sk + partials


def cp_shard_cost(input_ids, ranks: int, balance: str, itemsize: int = 8):
    """This rank's ``local_len`` tokens read from ``input_ids`` [B, S]; their ids, positions and codes written."""
    B, S = input_ids
    return 0, 4 * itemsize * B * local_len(S, ranks, balance), 0


def cp_gather_seq_cost(x, input_ids, dim: int, ranks: int, balance: str, itemsize: int = 4):
    """The shard ``x`` read and sent, every rank's shard written by the all-gather, put in position order and cut
    to the prompt's S tokens; held: the gathered shards."""
    shard = math.prod(x)
    gathered = ranks * shard
    out = gathered / x[dim] * input_ids[1]
    return 0, itemsize * (shard + 3 * gathered + out), itemsize * gathered


def cp_gather_last_cost(x, dim: int, ranks: int, itemsize: int = 4):
    """One row of the shard ``x`` read and sent, the N rows written by the all-gather, the owner's copied out;
    held: the N rows."""
    row = math.prod(x) / x[dim]
    return 0, itemsize * (row + ranks * row + 2 * row), itemsize * ranks * row


def cp_decode_slot_cost(codes, itemsize: int = 8):
    """The position codes [B, slots] read once to count the filled slots."""
    B, slots = codes
    return B * slots, itemsize * B * slots, 0


_DECLARED = (
    ("cp_shard", shard_reference, cp_shard_cost,
     "this rank's slice of the prompt (head-tail or contiguous), positions, codes"),
    ("cp_gather_seq", gather_seq_reference, cp_gather_seq_cost,
     "all-gather of a sequence-sharded tensor back into position order"),
    ("cp_gather_last", gather_last_reference, cp_gather_last_cost,
     "the prompt's last position of a sequence-sharded tensor, from the rank that holds it"),
    ("cp_attention", cp_attention_reference, cp_attention_cost,
     "prefill attention over all-gathered K/V, per local chunk"),
    ("cp_decode_slot", decode_slot_reference, cp_decode_slot_cost,
     "the cache slot of a decode token on this rank (round-robin)"),
    ("cp_decode_attention", decode_attention_reference, cp_decode_attention_cost,
     "decode attention over the shard, merged by lse"))
for _name, _reference, _cost, _doc in _DECLARED:
    registry.declare(registry.OpDef(name=_name, op=getattr(torch.ops.lcc, _name).default, reference=_reference,
                                    cost=_cost, doc=_doc))
