"""The attention passes on smollm2-135m through ``lcc diff``: exact ones within float tolerance of the
stage before them, approximate ones reporting their distance without failing."""

import pytest

from lcc.diff import diff


@pytest.mark.slow
def test_attention_passes_on_smollm2(smollm2):
    n = 256
    passes = ["flash",
              "attention-chunked:chunk=64",  # exact: the CPU fallback, 4 query chunks
              "block-sparse:pattern=strided,block=16,stride=4,layers=0-14",
              "sliding-window:window=256,sinks=0,layers=15-29",  # W >= length: exact
              "linear-attention:feature_map=elu"]
    reports = diff(smollm2, passes, length=n)
    canonical, flash, chunked, sparse, sliding, linear = reports[2:]
    assert canonical.name == "canonical" and canonical.ok
    assert flash.exact and flash.ok and flash.vs_prev_max_abs <= flash.limit
    assert chunked.name.startswith("attention-chunked") and chunked.exact and chunked.ok
    assert chunked.vs_prev_max_abs <= chunked.limit and abs(chunked.max_abs - canonical.max_abs) <= chunked.limit
    assert sliding.exact and sliding.ok and sliding.vs_prev_max_abs <= sliding.limit
    for approx in (sparse, linear):
        assert not approx.exact and approx.ok  # reported, not failed
        assert approx.vs_prev_max_abs > 1e-2 and approx.kl > 0 and approx.cosine < 1
    # a model trained with softmax attention does not survive linear attention untouched
    assert linear.kl > sparse.kl and linear.top1 < 0.5
