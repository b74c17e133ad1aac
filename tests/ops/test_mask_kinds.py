"""A mask kind is one registration: a toy kind registered here, in the test file, works through the
reference, the cost model's pair counts, the ``block-sparse`` pass and the Triton interpreter kernel.

The toy is "every other key": ``kv % 2 == 0 and kv <= q``; its oracle is a dense masked softmax
written below in float64, and its pair count a brute-force count over a small grid.
"""

import os
import sys

import pytest
import sympy
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (see tests/backends/triton/conftest.py)

import lcc.ops  # noqa: F401,E402
from lcc.ops.attention import attention_chunked, attention_cost, attention_reference, mask_pairs  # noqa: E402
from lcc.ops.masks import MaskKind, MaskSpec, causal_pairs, register_mask  # noqa: E402
from lcc.spec import Field, SpecError  # noqa: E402

TOY = "test-every-other"


def every_other_mod(q, kv, phase):
    return (kv % 2 == phase) & (kv <= q)


register_mask(MaskKind(
    TOY, every_other_mod, (Field("phase", int, 0, "which parity of keys is kept", low=0, high=1),),
    doc="causal; every other key",
    row_counts=lambda p, phase: (p - phase) // 2 + 1,  # keys j <= p with j % 2 == phase (p >= phase)
    pairs=lambda Sq, Sk, phase: causal_pairs(Sq, Sk) / 2, sparse=True))


def allowed_by_hand(sq, sk, phase=0):
    q = torch.arange(sk - sq, sk)[:, None]
    kv = torch.arange(sk)[None, :]
    return (kv % 2 == phase) & (kv <= q)


def dense_masked_softmax(q, k, v, allowed, scale):
    """The oracle: float64 softmax(q k^T * scale) v over the allowed pairs, GQA by repeating K/V."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, -1).nan_to_num(0.0) @ v).float()


def qkv(sq, sk, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, sq, 16, generator=gen), torch.randn(1, 2, sk, 16, generator=gen),
            torch.randn(1, 2, sk, 16, generator=gen))


def test_spec_parses_through_the_shared_parser():
    assert str(MaskSpec.parse(TOY)) == f"{TOY}:phase=0"
    assert MaskSpec.parse(f"{TOY}:phase=1").kernel_args == (1,)
    with pytest.raises(SpecError, match="phase=2 is out of range"):
        MaskSpec.parse(f"{TOY}:phase=2")


@pytest.mark.parametrize("sq,sk,phase", [(1, 1, 0), (5, 5, 0), (7, 19, 0), (12, 12, 1), (3, 20, 1)])
def test_reference_and_chunked_equal_a_dense_masked_softmax(sq, sk, phase):
    q, k, v = qkv(sq, sk)
    mask = f"{TOY}:phase={phase}"
    want = dense_masked_softmax(q, k, v, allowed_by_hand(sq, sk, phase), 0.25)
    torch.testing.assert_close(attention_reference(q, k, v, None, 0.25, mask), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention_chunked(q, k, v, None, 0.25, mask, chunk=3), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.ops.lcc.attention(q, k, v, None, 0.25, mask, "flash"), want, atol=1e-5,
                               rtol=1e-5)


def test_pair_counts_equal_a_brute_force_count():
    for phase in (0, 1):
        for sq in range(1, 13):
            for extra in range(0, 9):
                want = int(allowed_by_hand(sq, sq + extra, phase).sum())
                assert mask_pairs(f"{TOY}:phase={phase}", sq, sq + extra) == want
    S = sympy.Symbol("S", positive=True, integer=True)
    assert sympy.simplify(mask_pairs(TOY, S, S) - S * (S + 1) / 4) == 0
    flops, _, _ = attention_cost(1, 4, 2, 10, 10, 16, 16, TOY)
    assert flops == int(allowed_by_hand(10, 10).sum()) * 4 * (2 * 16 + 2 * 16)


def test_block_sparse_pass_offers_the_kind_and_matches_hf_with_its_mask(tiny):
    from lcc.capture.export import capture
    from lcc.passes import apply_passes, canonicalize, parse_pass
    from lcc.passes.graph import ATTENTION, get_arg, lcc_nodes
    from tests.passes.test_sparse import hf_attention, masked_softmax_attention

    llama = tiny("llama")
    program = canonicalize(capture(llama, capacity=32, entries=("prefill_full",)))
    spec = parse_pass(f"block-sparse:pattern={TOY}")
    assert not spec.exact_for(8)  # the pass's exactness reads the kind's pair count
    out = apply_passes(program, [spec])
    assert {get_arg(n, "mask") for gm in out.entries.values() for n in lcc_nodes(gm, ATTENTION)} == {f"{TOY}:phase=0"}
    n = 24
    ids = torch.randint(0, llama.spec.vocab, (1, n), generator=torch.Generator().manual_seed(1))
    got = out.entries["prefill_full"](ids, *out.cache.empty())[0]
    with torch.inference_mode(), hf_attention(llama.model, masked_softmax_attention(allowed_by_hand(n, n))) as model:
        want = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sq,sk,phase", [(9, 9, 0), (20, 37, 1), (1, 23, 0)])
def test_triton_kernel_matches_the_reference(sq, sk, phase):
    pytest.importorskip("triton")
    from lcc.backends.triton.attention import attn_fwd, flash_attention
    from lcc.backends.triton.interpret import is_interpreted

    if not (torch.cuda.is_available() or is_interpreted(attn_fwd)):
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; run this file alone")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (t.to(device) for t in qkv(sq, sk, seed=3))
    mask = f"{TOY}:phase={phase}"
    got = flash_attention(q, k, v, None, 0.25, mask, block_m=16, block_n=16)
    want = attention_reference(q, k, v, None, 0.25, mask)
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(want.cpu(), dense_masked_softmax(*qkv(sq, sk, seed=3), allowed_by_hand(sq, sk, phase),
                                                                0.25), atol=1e-5, rtol=1e-5)
