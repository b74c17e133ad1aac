"""lcc.cost.comm: collective bytes against the tensors the context-parallel ops gather; the profiles' links.

Oracles: the shapes the ops exchange (each rank receives the other ranks' shards of K and V per
layer, ``shard_positions`` gives their sizes); the datasheets' NVLink figures (900 GB/s
bidirectional per H100 / H200 SXM GPU, so 450 GB/s per direction).
"""

import pytest

from lcc.cost import comm
from lcc.cost.hardware import load_profile, parse_profile, to_toml
from lcc.models.spec import ModelSpec, RotarySpec
from lcc.ops.context_parallel import shard_positions

LLAMA3_8B = ModelSpec(model_id="llama-3-8b-shape", family="llama", layers=32, heads=32, kv_heads=8, head_dim=128,
                      hidden=4096, vocab=128256, attention=("full",) * 32, rotary=RotarySpec(500000.0, 128),
                      trained_len=8192, dtype="bfloat16", params=8_030_261_248)


@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_prefill_all_gather_bytes_are_the_other_ranks_shards(tiny, ranks):
    spec = tiny("llama").spec
    seq = 64 * ranks  # splits evenly: no padding
    shard = shard_positions(seq, ranks, "head-tail").shape[1]
    kv = next(c for c in comm.prefill_collectives(spec, 4) if c.name.startswith("all-gather K/V"))
    received = (ranks - 1) * shard * spec.kv_heads * spec.head_dim * 2 * 4  # K and V of fp32, per layer
    assert kv.bytes_in.subs({comm.L: seq, comm.N: ranks}) == received
    assert kv.calls == spec.layers


@pytest.mark.parametrize("name", ["h100", "h200"])
def test_nvlink_profiles_list_their_link_and_round_trip(name):
    p = load_profile(name)
    assert "NVLink" in p.link and p.link_bandwidth == 450e9 and 0 < p.link_latency < 1e-4
    assert parse_profile(to_toml(p), name) == p


def test_eight_h100_hold_a_million_tokens_of_an_8b_model_that_one_cannot():
    spec = LLAMA3_8B
    h100 = load_profile("h100")
    one, eight = (comm.predict_prefill(spec, 1 << 20, n, h100) for n in (1, 8))
    assert one["memory"]["cache"] == 32 * 2 * 8 * 128 * 2 * (1 << 20)  # 128 KiB per token in bf16: 128 GiB
    assert one["memory"]["total"] > h100.memory_bytes > eight["memory"]["total"]
    assert eight["memory"]["cache"] == pytest.approx(one["memory"]["cache"] / 8, rel=0.01)  # + position codes
    assert 0 < eight["comm_share"] < 0.5 and eight["time_s"] < one["time_s"]


def test_ranks_needed_for_a_million_tokens_of_an_8b_model_on_h100():
    spec = LLAMA3_8B
    # by hand: 15 GiB of bf16 weights + 4 GiB of one layer's gathered K/V + 128 GiB / N of cache <= 80 GiB
    assert comm.ranks_needed(spec, 1 << 20, load_profile("h100")) == 3
    assert comm.ranks_needed(spec, 8192, load_profile("h100")) == 1
