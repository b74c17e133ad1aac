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
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from lcc.capture.export import capture
from lcc.capture.program import Program
from lcc.distributed import is_context_parallel
from lcc.models.loader import LoadedModel
from lcc.passes import apply_passes, canonicalize, parse_pass

LOGIT_TOL = 1e-4  # fp32 logit tolerance: captured/canonical against HF eager, exact passes against the stage before
REL_TOL = 1e-5  # ... plus REL_TOL * max|reference logits| (fp32 reassociation: BLAS may split a reduction
# differently from one call to the next on a loaded machine, which moved smollm2's logits by more than 1e-4)

# Half precision: an exact stage may be at most HALF_FACTOR times as far from the fp32 oracle as HF eager itself
# is when it runs in that dtype (plus the fp32 limit).  A fixed floor cannot work: on smollm2-135m HF eager in
# bf16 is 1.42 from fp32 on a 128-token sample (fp16: 0.32), above any floor that still catches a real bug on
# the tiny models, where the same distance is 0.004 (README, "Numerics").
HALF_FACTOR = 2.0


def logit_limit(ref_logits: torch.Tensor, tol: float | None = None, noise: float = 0.0) -> float:
    """DESIGN.md's rule for an exact stage: max abs logit error <= tol + REL_TOL * max|ref| (+ HALF_FACTOR x noise).

    ``ref_logits`` are fp32 (the oracle, or the stage before); ``noise`` is the distance of HF eager in the
    program's half dtype from the fp32 oracle (0 for fp32 programs); ``tol`` defaults to :data:`LOGIT_TOL`."""
    return (LOGIT_TOL if tol is None else tol) + REL_TOL * float(torch.as_tensor(ref_logits).abs().max()) \
        + HALF_FACTOR * noise


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
    against: str = "hf-eager"  # what vs_prev_max_abs measures against: hf-eager, previous stage, fp32 oracle

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outputs:
    logits: torch.Tensor  # [S, V]
    hidden: torch.Tensor  # [L+1, S, H]
    _logp: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def log_probs(self) -> torch.Tensor:
        """Next-token log-probabilities in fp64 (kept: the oracle's are compared with every stage)."""
        if self._logp is None:
            self._logp = torch.log_softmax(self.logits.double(), -1)
        return self._logp


@dataclass
class Oracle32:
    """For a half-precision program: HF eager of the same weights in fp32, and how far HF eager in the
    program's own dtype is from it (the dtype's noise, which scales the limit)."""

    outputs: Outputs
    noise: float


def compare(ref: Outputs, out: Outputs, name: str, exact: bool, prev: Outputs | None = None,
            tol: float | None = None, fp32: Oracle32 | None = None) -> StageReport:
    """Errors of ``out`` against the oracle ``ref`` (HF eager in the program's dtype).

    An exact stage must also match, within :func:`logit_limit`: ``ref`` (captured / canonical, fp32) or
    ``prev`` (an exact pass, fp32), or, for a half-precision program (``fp32`` given), the fp32 oracle."""
    d = (out.logits - ref.logits).abs()
    max_abs = float(d.max())
    rel = max_abs / max(float(ref.logits.abs().max()), 1e-30)
    logp_ref, logp = ref.log_probs(), out.log_probs()
    p_ref, p = logp_ref.exp(), logp.exp()
    cosine = float(torch.nn.functional.cosine_similarity(p_ref, p, dim=-1).mean())
    kl = float((p_ref * (logp_ref - logp)).sum(-1).mean().clamp_min(0))
    top1 = float((ref.logits.argmax(-1) == out.logits.argmax(-1)).float().mean())
    first = None
    for i in range(ref.hidden.shape[0]):
        h_ref, h = ref.hidden[i], out.hidden[i]
        h_tol = (LOGIT_TOL if tol is None else tol) * max(1.0, float(h_ref.abs().max())) \
            + (HALF_FACTOR * fp32.noise if fp32 is not None else 0.0)
        if float((h - h_ref).abs().max()) > h_tol:
            first = min(max(i - 1, 0), ref.hidden.shape[0] - 2)  # hidden[0] is the embedding output
            break
    if fp32 is not None:  # half precision: against the fp32 oracle, scaled by the dtype's own noise
        vs_prev, against = float((out.logits - fp32.outputs.logits).abs().max()), "fp32 oracle"
        limit = logit_limit(fp32.outputs.logits, tol, fp32.noise)
    elif prev is None:  # captured / canonical: against HF eager
        vs_prev, limit, against = max_abs, logit_limit(ref.logits, tol), "hf-eager"
    else:  # an exact pass: against the stage before it
        vs_prev, against = float((out.logits - prev.logits).abs().max()), "previous stage"
        limit = logit_limit(prev.logits, tol)
    ok = (vs_prev <= limit) if exact else True
    return StageReport(name, exact, max_abs, rel, cosine, kl, top1, first, vs_prev, limit, ok, against)


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
def fp32_oracle(loaded: LoadedModel, ids: torch.Tensor, ref: Outputs | None = None) -> Oracle32 | None:
    """None for an fp32 model; else HF eager of an fp32 copy of its (rounded) weights and the distance of
    ``ref`` (HF eager in the model's dtype) from it."""
    if loaded.spec.dtype == "float32":
        return None
    import copy

    ref = ref if ref is not None else hf_outputs(loaded, ids)
    wide = LoadedModel(copy.deepcopy(loaded.model).float(), loaded.tokenizer, loaded.spec, loaded.weights_hash,
                       loaded.source)
    outputs = hf_outputs(wide, ids)
    del wide
    return Oracle32(outputs, float((ref.logits - outputs.logits).abs().max()))


@torch.inference_mode()
def program_outputs(program: Program, ids: torch.Tensor) -> Outputs:
    if is_context_parallel(program.passes):  # runs in its N ranks (rank 0's outputs)
        from lcc.distributed.launch import run_entry

        logits, hidden = run_entry(program, "prefill_full", ids)
    else:
        logits, hidden, *_ = program.entries["prefill_full"](ids, *program.cache.empty())
    return Outputs(logits[0].float(), hidden[:, 0].float())


@dataclass
class Checked:
    """What :func:`check_stages` ran: a report per stage, and the last stage's outputs on ``ids``."""

    reports: list[StageReport]
    ids: torch.Tensor
    last: Outputs


def diff(loaded: LoadedModel, passes=(), length: int = 128,
         progress: Callable[[str], None] | None = None, backend: str | None = None) -> list[StageReport]:
    """HF eager, the captured and canonical programs, each pass stage and (``backend``) the lowered one."""
    return check_stages(loaded, passes, length, progress, backend).reports


def check_stages(loaded: LoadedModel, passes=(), length: int = 128, progress: Callable[[str], None] | None = None,
                 backend: str | None = None, captured: Program | None = None,
                 canonical: Program | None = None) -> Checked:
    """:func:`diff`'s stages, with the last stage's outputs.  ``captured`` and ``canonical``: the programs of
    those two stages, already made from ``loaded`` (``lcc compile`` captures once for its planner and this
    check), each with a ``prefill_full`` entry of capacity >= ``length``; else they are made here."""
    from lcc.data import sample_ids

    if backend is not None:
        from lcc.diff.lowered import check_backend

        check_backend(backend, loaded.spec.dtype)

    specs = [parse_pass(p) if isinstance(p, str) else p for p in passes]
    ids = torch.tensor([sample_ids(loaded.tokenizer, length, loaded.spec.vocab)])
    step = progress or (lambda _: None)
    step("hf-eager")
    ref = hf_outputs(loaded, ids)
    fp32 = fp32_oracle(loaded, ids, ref)
    reports = [compare(ref, ref, "hf-eager", True)]
    step("capture")
    program = captured if captured is not None else capture(loaded, capacity=length, entries=("prefill_full",))
    reports.append(compare(ref, program_outputs(program, ids), "captured", True, fp32=fp32))
    step("canonicalize")
    program = canonical if canonical is not None else canonicalize(program)
    last = [program_outputs(program, ids)]
    reports.append(compare(ref, last[0], "canonical", True, fp32=fp32))

    def on_stage(p: Program) -> None:
        spec = specs[len(p.passes) - 1]
        step(p.stage)
        out = program_outputs(p, ids)
        reports.append(compare(ref, out, p.stage, spec.exact_for(length, p.spec.trained_len), prev=last[0], fp32=fp32))
        last[0] = out

    program = apply_passes(program, specs, on_stage=on_stage)
    if backend is not None:
        from lcc.diff.lowered import lowered_outputs

        step(f"lower {backend}")
        out = Outputs(*lowered_outputs(backend, program, ids))
        reports.append(compare(ref, out, f"lowered:{backend}", True, prev=last[0], fp32=fp32))
    return Checked(reports, ids, last[0])
