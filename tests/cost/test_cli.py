"""The cost/plan/calibrate CLI functions, registered on a throwaway typer app as lcc.cli will register them."""

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from lcc.cost import cli
from lcc.errors import UsageError


@pytest.fixture
def run(tiny_program, monkeypatch, request):
    """Invoke the functions as commands; the model is the session's captured tiny-llama (one capture)."""
    if "real_capture" not in request.keywords:
        monkeypatch.setattr(cli, "_program", lambda model, dtype="float32": tiny_program)
    app = typer.Typer()
    app.command("cost")(cli.cost)
    app.command("plan")(cli.plan)
    app.command("calibrate")(cli.calibrate)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, list(args))

    return invoke


def test_cost_json_has_formulas_and_one_row_per_length(run, tmp_path):
    png = tmp_path / "cost.png"
    r = run("cost", "tiny-llama", "--lengths", "1k,8k", "--json", "--plot", str(png))
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert "L**2" in d["formulas"]["prefill_flops"] and [x["length"] for x in d["lengths"]] == [1024, 8192]
    assert d["lengths"][1]["memory"] > d["lengths"][0]["memory"]
    assert set(d["attention_working_set"]) >= {"reference", "flash"}
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.real_capture
def test_cost_table_prints_formulas(run):
    r = run("cost", "tiny-llama", "--lengths", "4k", "--pass", "flash")
    assert r.exit_code == 0, r.output
    assert "prefill flops =" in r.output and "KV cache" in r.output


def test_plan_json_fields(run):
    r = run("plan", "tiny-llama", "--target-len", "1k", "--profile", "rtx4090", "--json")  # 4x: the prior plans
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    for c in [d["chosen"], *d["candidates"]]:
        assert {"passes", "memory", "prefill_time", "decode_tokens_per_s", "risk"} <= set(c)


def test_plan_says_when_nothing_fits(run):
    r = run("plan", "tiny-llama", "--target-len", "64k", "--memory", "1KB")
    assert r.exit_code == 1
    assert "nothing fits" in r.output and "smallest" in r.output


@pytest.mark.parametrize("args,match", [
    (("cost", "tiny-llama", "--profile", "tpu"), "unknown profile"),
    (("plan", "tiny-llama", "--memory", "80XB"), "bad memory size"),
    (("plan", "tiny-llama", "--quality", "great"), "exact, balanced, retrieval or any"),
    (("plan", "tiny-llama", "--target-len", "auto", "--max-len", "12q"), "bad length"),
    (("plan", "tiny-llama", "--target-len", "12q"), "bad length"),
    (("plan", "tiny-llama", "--dtype", "fp7"), "unknown dtype"),
    (("cost", "tiny-llama", "--lengths", "4k", "--pass", "warp-drive"), "unknown pass"),
])
def test_bad_input_is_a_one_line_usage_error(run, args, match):
    r = run(*args)
    assert isinstance(r.exception, UsageError)
    assert match in str(r.exception) and "\n" not in str(r.exception)


def test_memory_sizes():
    assert cli.parse_memory("80GB") == 80e9
    assert cli.parse_memory("24GiB") == 24 * 2**30 == cli.parse_memory("24G")
    assert cli.parse_memory("512MiB") == 512 * 2**20


def test_lcc_plan_exits_1_when_nothing_fits():
    """Through the real entry point (lcc.cli.main), not only typer's runner: the exit code reaches the shell."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lcc", "plan", "tiny-llama", "--target-len", "64k", "--memory", "1KB",
                        "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["chosen"] is None and "nothing fits" in d["reason"] and "smallest" in d["reason"]


def test_plan_auto_answers_a_length_and_its_plan(run):
    r = run("plan", "tiny-llama", "--target-len", "auto", "--memory", "8GB", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["chosen"] is not None and d["target_len"] >= 1024
    assert d["chosen"]["quality"]["source"] in ("record", "prior") and d["chosen"]["positions"]


def test_corrupt_quality_records_are_a_usage_error_never_used(run, tmp_path, monkeypatch):
    from lcc.models import load_model

    monkeypatch.setenv("LCC_CACHE", str(tmp_path))
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / f"{load_model('tiny-llama').weights_hash}.json").write_text("{broken")
    r = run("plan", "tiny-llama", "--target-len", "1k")
    assert isinstance(r.exception, UsageError) and "not readable JSON" in str(r.exception)


def test_plan_devices_proposes_context_parallel_by_hand_arithmetic(run, tiny_program):
    """Nothing fits one device: ``--devices`` gives the fewest ranks whose per-rank memory fits, by hand: each rank
    holds the K/V (and an int64 position code) of L / N tokens + 4 slots per layer, one layer's gathered K/V of
    all L tokens, the replicated weights, and the chosen program's activations at L / N tokens."""
    import math

    from lcc.cost.hardware import load_profile
    from lcc.cost.model import program_cost
    from lcc.passes import apply_passes

    r = run("plan", "tiny-llama", "--target-len", "16k", "--profile", "h100", "--memory", "16MB", "--devices", "64",
            "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    cp = d["context_parallel"]
    assert d["chosen"] is None and cp["budget"] == 16e6 and cp["devices"] == 64
    loaded, program = tiny_program
    s, n, h100 = loaded.spec, 16384, load_profile("h100")
    kv = 2 * s.kv_heads * s.head_dim * 4  # K and V of one token in one layer, float32
    base = cp["passes"][:-1]
    pc = program_cost(apply_passes(program, base), "cuda")

    def per_rank(ranks):
        cache = s.layers * n * kv if ranks == 1 else s.layers * (n / ranks + 4) * (kv + 8)
        gathered = 0 if ranks == 1 else n * kv
        return cache + gathered + 4 * s.params + pc.evaluate(math.ceil(n / ranks), h100).activations

    needed = next(k for k in range(1, 65) if per_rank(k) <= 16e6)
    assert needed > 1 and cp["ranks_needed"] == cp["ranks"] == needed
    assert cp["passes"][-1] == f"context-parallel:ranks={needed}"
    rows = {row["ranks"]: row for row in cp["per_rank"]}
    assert sorted(rows) == [1, needed, 64]
    for k, row in rows.items():
        assert row["memory"]["total"] == pytest.approx(per_rank(k), rel=1e-9)
        assert row["fits"] == (k >= needed)
    assert rows[needed]["memory"]["cache"] == pytest.approx(s.layers * (n / needed + 4) * (kv + 8), rel=1e-9)
    assert 0 < rows[needed]["comm_s"] < rows[needed]["time_s"] and rows[1]["comm_s"] == 0


def test_plan_with_too_few_devices_says_how_many_it_needs(run):
    r = run("plan", "tiny-llama", "--target-len", "16k", "--profile", "h100", "--memory", "16MB", "--devices", "2")
    assert r.exit_code == 1
    m = re.search(r"16k tokens need (\d+) h100 devices, more than the 2 given: rerun with --devices (\d+)",
                  " ".join(r.output.split()))
    assert m and int(m.group(1)) == int(m.group(2)) > 2
