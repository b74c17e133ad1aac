"""``lcc diff``: the same inputs through every stage, compared with HF eager.

Stages: ``hf-eager`` (the oracle), ``captured``, ``canonical``, then one per pass and,
with ``backend``, ``lowered:B``: the last stage's program lowered by that backend and run
(:mod:`lcc.diff.lowered`); its float tolerance is checked against the stage before it.
Per stage: max abs and relative logit error, cosine similarity and KL divergence of
next-token distributions, top-1 agreement over positions, and the first layer whose
hidden state diverges past the tolerance.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from lcc.capture.export import capture
from lcc.capture.program import Program
from lcc.models.loader import LoadedModel
from lcc.passes import apply_passes, canonicalize, parse_pass

LOGIT_TOL = 1e-4  # fp32 logit tolerance: captured/canonical against HF eager, exact passes against the stage before
REL_TOL = 1e-5  # ... plus REL_TOL * max|reference logits| (fp32 reassociation: BLAS may split a reduction
# differently from one call to the next on a loaded machine, which moved smollm2's logits by more than 1e-4)


def logit_limit(ref_logits: torch.Tensor, tol: float = LOGIT_TOL) -> float:
    """DESIGN.md's fp32 rule for an exact stage: max abs logit error <= tol + REL_TOL * max|reference logits|."""
    return tol + REL_TOL * float(torch.as_tensor(ref_logits).abs().max())


@dataclass
class StageReport:
    name: str
    exact: bool
    max_abs: float
    rel: float
    cosine: float
    kl: float
    top1: float
    first_divergent_layer: int | None
    vs_prev_max_abs: float
    limit: float  # what vs_prev_max_abs may reach in an exact stage (logit_limit)
    ok: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outputs:
    logits: torch.Tensor  # [S, V]
    hidden: torch.Tensor  # [L+1, S, H]


def compare(ref: Outputs, out: Outputs, name: str, exact: bool, prev: Outputs | None = None,
            tol: float = LOGIT_TOL) -> StageReport:
    """Errors of ``out`` against the oracle ``ref``; an exact stage must also match ``prev`` within ``tol``."""
    d = (out.logits - ref.logits).abs()
    max_abs = float(d.max())
    rel = max_abs / max(float(ref.logits.abs().max()), 1e-30)
    logp_ref = torch.log_softmax(ref.logits.double(), -1)
    logp = torch.log_softmax(out.logits.double(), -1)
    p_ref, p = logp_ref.exp(), logp.exp()
    cosine = float(torch.nn.functional.cosine_similarity(p_ref, p, dim=-1).mean())
    kl = float((p_ref * (logp_ref - logp)).sum(-1).mean().clamp_min(0))
    top1 = float((ref.logits.argmax(-1) == out.logits.argmax(-1)).float().mean())
    first = None
    for i in range(ref.hidden.shape[0]):
        h_ref, h = ref.hidden[i], out.hidden[i]
        h_tol = tol * max(1.0, float(h_ref.abs().max()))
        if float((h - h_ref).abs().max()) > h_tol:
            first = min(max(i - 1, 0), ref.hidden.shape[0] - 2)  # hidden[0] is the embedding output
            break
    if prev is None:  # captured / canonical: against HF eager
        vs_prev, limit = max_abs, logit_limit(ref.logits, tol)
    else:  # an exact pass: against the stage before it
        vs_prev = float((out.logits - prev.logits).abs().max())
        limit = logit_limit(prev.logits, tol)
    ok = (vs_prev <= limit) if exact else True
    return StageReport(name, exact, max_abs, rel, cosine, kl, top1, first, vs_prev, limit, ok)


@contextlib.contextmanager
def hf_eager(model):
    """transformers' own ``eager`` attention (plain matmul + softmax): the oracle's arithmetic."""
    saved = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        yield model
    finally:
        model.config._attn_implementation = saved


@torch.inference_mode()
def hf_outputs(loaded: LoadedModel, ids: torch.Tensor) -> Outputs:
    with hf_eager(loaded.model) as model:
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return Outputs(out.logits[0].float(), torch.stack(out.hidden_states)[:, 0].float())


@torch.inference_mode()
def program_outputs(program: Program, ids: torch.Tensor) -> Outputs:
    logits, hidden, *_ = program.entries["prefill_full"](ids, *program.cache.empty())
    return Outputs(logits[0].float(), hidden[:, 0].float())


def diff(loaded: LoadedModel, passes=(), length: int = 128,
         progress: Callable[[str], None] | None = None, backend: str | None = None) -> list[StageReport]:
    """HF eager, the captured and canonical programs, each pass stage and (``backend``) the lowered one."""
    from lcc.data import sample_ids

    if backend is not None:
        from lcc.diff.lowered import check_backend

        check_backend(backend)

    specs = [parse_pass(p) if isinstance(p, str) else p for p in passes]
    ids = torch.tensor([sample_ids(loaded.tokenizer, length, loaded.spec.vocab)])
    step = progress or (lambda _: None)
    step("hf-eager")
    ref = hf_outputs(loaded, ids)
    reports = [compare(ref, ref, "hf-eager", True)]
    step("capture")
    program = capture(loaded, capacity=length, entries=("prefill_full",))
    reports.append(compare(ref, program_outputs(program, ids), "captured", True))
    step("canonicalize")
    program = canonicalize(program)
    last = [program_outputs(program, ids)]
    reports.append(compare(ref, last[0], "canonical", True))

    def on_stage(p: Program) -> None:
        spec = specs[len(p.passes) - 1]
        step(p.stage)
        out = program_outputs(p, ids)
        reports.append(compare(ref, out, p.stage, spec.exact_for(length), prev=last[0]))
        last[0] = out

    program = apply_passes(program, specs, on_stage=on_stage)
    if backend is not None:
        from lcc.diff.lowered import lowered_outputs

        step(f"lower {backend}")
        out = Outputs(*lowered_outputs(backend, program, ids))
        reports.append(compare(ref, out, f"lowered:{backend}", True, prev=last[0]))
    return reports
