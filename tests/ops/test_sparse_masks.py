"""Block-sparse mask kinds: each predicate against the paper's definition written out by hand,
their block maps and pair counts against the dense mask built from the same predicate."""

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lcc.ops  # noqa: F401
from lcc.ops.attention import attention_chunked, attention_reference, mask_pairs
from lcc.ops.masks import MaskSpec, block_map, dense_mask

SPECS = st.one_of(
    st.builds("block-local:block={},blocks={}".format, st.integers(1, 9), st.integers(1, 4)),
    st.builds("strided:stride={},block={}".format, st.integers(1, 9), st.integers(1, 4)),
    st.builds("fixed:stride={},c={},block={}".format, st.integers(1, 6), st.integers(0, 7), st.integers(1, 3)),
    st.builds(lambda r, m, lv, g: f"dilated:segment={r * m},rate={r},levels={lv},growth={g}",
              st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    st.builds("global-local:globals={},window={},every={}".format, st.integers(0, 4), st.integers(1, 12),
              st.integers(0, 9)),
)


def by_hand(kind, a, i, j):
    """The patterns as the papers state them, one (query, key) pair at a time."""
    if j > i:
        return False
    if kind == "block-local":
        return i // a["block"] - j // a["block"] < a["blocks"]
    if kind == "strided":  # Child et al. 2019: A1 = the last l, A2 = every l-th back (over blocks of b)
        qi, kj = i // a["block"], j // a["block"]
        return qi - kj < a["stride"] or (qi - kj) % a["stride"] == 0
    if kind == "fixed":  # A1 = same group of l blocks, A2 = the last c blocks of every group
        qi, kj = i // a["block"], j // a["block"]
        return qi // a["stride"] == kj // a["stride"] or kj % a["stride"] >= a["stride"] - a["c"]
    if kind == "dilated":  # LongNet: some level whose segment holds both and whose rate selects both
        w, r = a["segment"], a["rate"]
        for _ in range(a["levels"]):
            if i // w == j // w and (i % w) % r == 0 and (j % w) % r == 0:
                return True
            w, r = w * a["growth"], r * a["growth"]
        return False
    g, e = a["globals"], a["every"]

    def is_global(x):
        return x < g or (e > 0 and x % e == 0)

    return i - j < a["window"] or is_global(i) or is_global(j)


@settings(max_examples=60, deadline=None)
@given(spec=SPECS, n=st.integers(1, 48))
def test_predicates_match_the_papers_definitions(spec, n):
    s = MaskSpec.parse(spec)
    mask = dense_mask(s, n, n)
    expected = torch.tensor([[by_hand(s.kind, s.args, i, j) for j in range(n)] for i in range(n)])
    assert torch.equal(mask, expected)


@settings(max_examples=60, deadline=None)
@given(spec=SPECS, sq=st.integers(1, 60), extra=st.integers(0, 60))
def test_exact_pair_counts_equal_the_dense_mask(spec, sq, extra):
    assert int(mask_pairs(spec, sq, sq + extra)) == int(dense_mask(spec, sq, sq + extra).sum())


@settings(max_examples=40, deadline=None)
@given(spec=st.one_of(SPECS, st.just("causal"), st.builds("sliding:window={},sinks={}".format, st.integers(1, 20),
                                                          st.integers(0, 3))),
       sq=st.integers(1, 50), extra=st.integers(0, 40), bm=st.sampled_from([1, 4, 16]), bn=st.sampled_from([1, 8, 16]))
def test_block_map_is_the_dense_mask_reduced_over_tiles(spec, sq, extra, bm, bn):
    sk = sq + extra
    any_map, full_map = block_map(spec, sq, sk, bm, bn)
    n_m, n_n = -(-sq // bm), -(-sk // bn)
    dense = torch.zeros(n_m * bm, n_n * bn, dtype=torch.bool)
    dense[:sq, :sk] = dense_mask(spec, sq, sk)
    valid = torch.zeros_like(dense)
    valid[:sq, :sk] = True
    tiles = lambda t: t.reshape(n_m, bm, n_n, bn).transpose(1, 2)  # noqa: E731
    assert torch.equal(any_map, tiles(dense).any(-1).any(-1))
    rows_ok = torch.zeros(n_m * bm, n_n * bn, dtype=torch.bool)
    rows_ok[:sq] = True
    whole = tiles(dense | ~rows_ok).all(-1).all(-1) & tiles(valid | ~rows_ok).all(-1).all(-1)
    assert torch.equal(full_map, whole)


@pytest.mark.parametrize("kind", ["causal", "sliding"])
def test_portable_predicates_equal_the_built_in_ones(kind):
    spec = "causal" if kind == "causal" else "sliding:window=5,sinks=2"
    fn, args = MaskSpec.parse(spec).record.mod, MaskSpec.parse(spec).kernel_args
    q, kv = torch.arange(40)[:, None], torch.arange(40)[None, :]
    assert torch.equal(fn(q, kv, *args), MaskSpec.parse(spec).mask_mod()(q, kv))


@pytest.mark.parametrize("spec", ["block-local:block=512,blocks=2", "strided:stride=128", "fixed:stride=128,c=8",
                                  "dilated:segment=2048,rate=1,levels=3,growth=2",
                                  "global-local:globals=4,window=1024,every=512"])
def test_symbolic_pair_counts_track_the_exact_ones(spec):
    S = sympy.Symbol("S", positive=True, integer=True)
    expr = mask_pairs(spec, S, S)
    assert isinstance(expr, sympy.Expr) and expr.free_symbols == {S}
    for n in (16384, 65536):
        exact = int(mask_pairs(spec, n, n))
        assert abs(float(expr.subs(S, n)) - exact) <= 0.05 * exact


def test_sparse_masks_cost_less_than_causal():
    n = 131072
    causal = int(mask_pairs("causal", n, n))
    for spec in ("block-local:block=512,blocks=2", "strided:stride=362",
                 "dilated:segment=2048,rate=1,levels=2,growth=2"):
        assert int(mask_pairs(spec, n, n)) < 0.05 * causal


@settings(max_examples=15, deadline=None)
@given(spec=SPECS, sq=st.integers(1, 20), extra=st.integers(0, 20), pad=st.integers(0, 4), seed=st.integers(0, 99))
def test_attention_op_honours_sparse_masks(spec, sq, extra, pad, seed):
    """The op's reference, chunked and dispatched paths agree under every sparse mask."""
    torch.manual_seed(seed)
    sk = sq + extra
    q, k, v = torch.randn(1, 2, sq, 8), torch.randn(1, 1, sk + pad, 8), torch.randn(1, 1, sk + pad, 8)
    kv_len = torch.tensor(sk)
    ref = attention_reference(q, k, v, kv_len, 0.5, spec)
    torch.testing.assert_close(attention_chunked(q, k, v, kv_len, 0.5, spec, chunk=3), ref)
    torch.testing.assert_close(torch.ops.lcc.attention(q, k, v, kv_len, 0.5, spec, "auto"), ref)


@pytest.mark.parametrize("spec", ["dilated:segment=6,rate=4", "strided:stride=0", "block-local:blocks=0",
                                  "global-local:window=0", "fixed:foo=1"])
def test_bad_parameters_are_rejected(spec):
    with pytest.raises(ValueError):
        MaskSpec.parse(spec).mask_mod()
