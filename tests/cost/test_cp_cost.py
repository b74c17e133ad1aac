"""``lcc cost`` of a context-parallel program: per-rank figures and its collectives over the profile's link.

Oracles, written here from the collectives' definitions: each rank of a ring all-gather over N ranks receives the
other N - 1 ranks' shards in N - 1 messages (Thakur et al. 2005); ``cp_attention`` all-gathers a layer's K and,
apart, its V (two collectives), ``cp_gather_last`` one row of the last hidden state per rank (the last token's,
from the rank that holds it), ``cp_decode_attention`` each layer's fp32
partial output and, apart, its log-sum-exp; a rank's cache holds ceil(C / N) + 3 slots plus a spare one, each
with K, V and an int64 position code (the pass's layout).  Symbolic pricing only: no process group is started.
"""

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from lcc.cost import cli, comm
from lcc.cost.hardware import load_profile
from lcc.cost.model import program_cost
from lcc.cost.symbols import at
from lcc.ops import registry
from lcc.passes import apply_passes

LENGTHS = (4096, 32768)  # split evenly over 2 x 4 head-tail chunks: no padding


@pytest.fixture(scope="module")
def h100():
    return load_profile("h100")


@pytest.fixture(scope="module")
def priced(tiny_program):
    """program_cost (cuda) of tiny-llama after these passes, each list priced once per module."""
    done = {}

    def price(*passes):
        if passes not in done:
            done[passes] = program_cost(apply_passes(tiny_program[1], list(passes)), "cuda")
        return done[passes]

    return price


@pytest.fixture
def run(tiny_program, monkeypatch):
    """The cost and plan commands on the session's captured tiny-llama."""
    monkeypatch.setattr(cli, "_program", lambda model, dtype="float32": tiny_program)
    app = typer.Typer()
    app.command("cost")(cli.cost)
    app.command("plan")(cli.plan)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def all_gather_time(received: float, messages: int, profile) -> float:
    return received / profile.link_bandwidth + messages * profile.link_latency


@pytest.mark.parametrize("ranks", [2, 4])
def test_lcc_cost_reports_the_all_gathers_bytes_and_link_time(run, tiny_program, h100, ranks):
    r = run("cost", "tiny-llama", "--pass", "flash", "--pass", f"context-parallel:ranks={ranks}", "--lengths",
            "4k,32k", "--profile", "h100", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    s = tiny_program[0].spec
    assert doc["unpriced"] == [] and doc["context_parallel"]["ranks"] == ranks
    assert doc["context_parallel"]["link"]["bandwidth"] == h100.link_bandwidth == 450e9  # NVLink 4, per direction
    for row, n in zip(doc["lengths"], LENGTHS):
        others = (ranks - 1) * n / ranks  # tokens of the other ranks, received by this one
        kv = others * 2 * s.kv_heads * s.head_dim * 4  # one layer's K and V, fp32
        hidden = (ranks - 1) * s.hidden * 4  # the last token's row from every rank, not the whole sequence
        assert row["ranks"] == ranks and row["comm_bytes"] == s.layers * kv + hidden
        expected = s.layers * all_gather_time(kv, 2 * (ranks - 1), h100) + all_gather_time(hidden, ranks - 1, h100)
        assert row["comm_time"] == pytest.approx(expected, rel=1e-12)
        assert row["comm_share"] == pytest.approx(row["comm_time"] / row["prefill_time"], rel=1e-12)
        partial = (ranks - 1) * s.heads * (s.head_dim + 1) * 4  # out [H, Dv] and lse [H] of the other ranks
        assert row["decode_comm_bytes"] == s.layers * partial
        assert row["decode_comm_time"] == pytest.approx(
            s.layers * all_gather_time(partial, 2 * (ranks - 1), h100), rel=1e-12)
        assert row["decode_comm_time"] < row["decode_time"]


@pytest.mark.parametrize("ranks,balance", [(2, "head-tail"), (4, "contiguous")])
def test_per_rank_figures_agree_with_predict_prefill(tiny_program, priced, h100, ranks, balance):
    """Communication and cache equal lcc.cost.comm's prediction; compute is 1/N of the single device's (the
    head-tail split gives every rank 1/N of the causal pairs; contiguous's last rank has the most) but the LM
    head, which every rank runs on the last token (within 1e-5: the positions the shard hands over are not
    computed per token)."""
    s = tiny_program[0].spec
    single = priced("flash")
    cp = priced("flash", f"context-parallel:ranks={ranks},balance={balance}")
    head = 2 * s.hidden * s.vocab
    for n in LENGTHS:
        one, e = single.evaluate(n, h100), cp.evaluate(n, h100)
        want = comm.predict_prefill(s, n, ranks, h100, "float32")
        assert e.comm_bytes == want["bytes_in"] and e.comm_time == pytest.approx(want["comm_s"], rel=1e-12)
        assert e.kv_cache == pytest.approx(want["memory"]["cache"], rel=1e-12)
        assert e.prefill_time == pytest.approx(cp.prefill.time(h100, n, n, e.capacity) + e.comm_time, rel=1e-12)
        if balance == "head-tail":
            assert e.prefill_flops - head == pytest.approx((one.prefill_flops - head) / ranks, rel=1e-5)
        else:  # the last rank: its n / N queries see (N - 1) n / N keys before them and its own causal block
            c = n // ranks
            attention = s.layers * s.heads * 4 * s.head_dim * ((ranks - 1) * c * c + c * (c + 1) / 2)
            causal = s.layers * s.heads * 4 * s.head_dim * n * (n + 1) / 2
            assert e.prefill_flops - head - attention == pytest.approx(
                (one.prefill_flops - head - causal) / ranks, rel=1e-5)


@pytest.mark.parametrize("n", [4096, 4097, 32768])
def test_a_ranks_cache_is_one_nth_of_the_single_device_cache_within_the_padding(tiny_program, priced, h100, n):
    s, ranks = tiny_program[0].spec, 2
    kv = 2 * s.kv_heads * s.head_dim * 4  # a token's K and V in one layer
    single = priced().evaluate(n, h100)
    cp = priced(f"context-parallel:ranks={ranks}").evaluate(n, h100)
    assert single.kv_cache == s.layers * n * kv
    assert cp.kv_cache == s.layers * (math.ceil(n / ranks) + 4) * (kv + 8)  # + an int64 position code per slot
    assert single.kv_cache / ranks < cp.kv_cache < single.kv_cache / ranks * (1 + 8 / kv) * (1 + 5 * ranks / n)
    assert cp.memory < single.memory


def test_every_context_parallel_op_has_a_cost_rule(tiny_program):
    cp_ops = [name for name in registry.ops() if name.startswith("cp_")]
    assert len(cp_ops) == 6 and all(registry.get(name).cost is not None for name in cp_ops)
    from lcc.capture import capture
    from lcc.passes import canonicalize

    every = canonicalize(capture(tiny_program[0], 128, entries=("prefill_logits", "prefill", "decode")))
    program = apply_passes(every, ["sliding-window:window=64,sinks=4", "context-parallel:ranks=4"])
    pc = program_cost(program, "cpu")
    priced = {node.op for e in pc.entries.values() for node in e.nodes}
    assert {f"lcc.{name}" for name in cp_ops} <= priced
    assert all(e.unpriced == [] for e in pc.entries.values())


def test_cost_table_gives_the_communication_and_prices_every_op(run):
    r = run("cost", "tiny-llama", "--pass", "context-parallel:ranks=2", "--lengths", "4k", "--profile", "h100")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "per rank of 2" in text and "communication per rank (ring all-gathers, in the times above)" in text
    assert "prefill: 2 x all-gather K/V" in text and "decode: 2 x all-gather partial out + lse" in text
    assert "priced as elementwise" not in text


def test_plan_says_when_context_parallelism_falls_back_from_the_quality_asked(run):
    """Past the trained length nothing is exact: the proposal is priced on the model without passes, and says so."""
    r = run("plan", "tiny-llama", "--target-len", "16k", "--profile", "h100", "--memory", "16MB", "--devices", "64",
            "--quality", "exact")
    text = " ".join(r.output.split())
    assert "no candidate it composes with (flash, attention-chunked, rope-scaling) meets --quality exact at 16k; " \
           "priced and proposed on the model without other passes" in text, r.output


@pytest.mark.parametrize("n", [4096, 32768])
def test_cp_attention_is_priced_by_the_algo_it_runs(tiny_program, n):
    """A rank runs its chunks with the layer's own ``algo`` (``lcc.ops.context_parallel`` calls ``lcc.attention``
    per chunk against the gathered keys up to its end; head-tail: rank N - 1 holds chunks N - 1 and N of 2N).
    Oracles from the implementations: ``flash`` on CUDA is the IO-aware kernel (each chunk's q, its keys and
    values up to its end read, its output written; no score through memory), then the gathered K/V written by
    the all-gather, put in position order and read back, and the chunks' outputs concatenated; ``auto`` (no
    ``flash`` pass) streams every score of a chunk against all its keys through memory; on the CPU ``flash``
    is the fused suffix path, whose matmul FLOPs are the kept causal pairs and whose working set does not
    hold a chunk's scores."""
    s, ranks = tiny_program[0].spec, 2
    B, H, Hkv, D, item = 1, s.heads, s.kv_heads, s.head_dim, 4
    tokens = n // ranks
    chunk = tokens // 2
    ends = (ranks * chunk, (ranks + 1) * chunk)
    gathered = B * Hkv * ranks * tokens * 2 * D

    def layers(passes, device):
        pc = program_cost(apply_passes(tiny_program[1], [*passes, f"context-parallel:ranks={ranks}"]), device)
        nodes = [x for x in pc.prefill.nodes if x.op == "lcc.cp_attention"]
        assert len(nodes) == s.layers
        return nodes[0]

    flash = layers(["flash"], "cuda")
    io = item * B * sum(H * chunk * D + Hkv * end * 2 * D + H * chunk * D for end in ends)
    rest = item * (B * Hkv * tokens * 2 * D + 3 * gathered + 2 * B * H * tokens * D)
    assert at(flash.bytes, n) == io + rest
    pairs = sum(chunk * (end - chunk) + chunk * (chunk + 1) / 2 for end in ends)
    assert at(flash.flops, n) == pytest.approx(B * H * 4 * D * pairs, rel=1e-12)
    scores = B * H * sum(chunk * end for end in ends)  # auto: every key up to the chunk's end, no skipping
    auto = layers([], "cuda")
    assert at(auto.bytes, n) > 32 * scores > 10 * at(flash.bytes, n)
    cpu = layers(["flash"], "cpu")
    assert at(sum(k.flops for k in cpu.kernels if k.unit == "matmul"), n) == pytest.approx(B * H * 4 * D * pairs,
                                                                                          rel=1e-12)
    assert at(cpu.work, n) < item * gathered + 4 * B * H * chunk * ends[-1]
