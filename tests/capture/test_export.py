"""``capture``: prefill_logits made from prefill's graph (one export fewer) is the program HF computes."""

import pytest
import torch

from lcc.capture import capture
from lcc.capture.export import RANGES


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: soft-capping between the LM head and the logits
def test_prefill_logits_from_prefills_graph_gives_hf_logits_at_every_position(tiny, monkeypatch, family):
    loaded = tiny(family)
    exports = []
    real_export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    program = capture(loaded, 64, entries=("prefill", "prefill_logits"))
    assert len(exports) == 1  # prefill only: prefill_logits was made from its graph
    gm = program.entries["prefill_logits"]
    assert RANGES in gm.meta and torch.ops.aten.alias.default in {n.target for n in gm.graph.nodes}
    ids = torch.randint(0, loaded.spec.vocab, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = loaded.model(input_ids=ids).logits  # the oracle: HF eager, every position
        got, *cache = gm(ids, *program.cache.empty())
        last, *_ = program.entries["prefill"](ids, *program.cache.empty())
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 + 1e-5 * want.abs().max()  # DESIGN.md's fp32 rule
    assert (got[:, -1:] - last).abs().max() <= 1e-4 + 1e-5 * last.abs().max()  # prefill's own last position
    k0 = cache[0]
    assert k0.shape[2] == 64 and k0[:, :, 24:].abs().max() == 0  # the cache written for the prompt only
