"""The cost/plan/calibrate CLI functions, registered on a throwaway typer app as lcc.cli will register them."""

import json

import pytest
import typer
from typer.testing import CliRunner

from lcc.cost import cli
from lcc.errors import UsageError


@pytest.fixture
def run(tiny_program, monkeypatch, request):
    """Invoke the functions as commands; the model is the session's captured tiny-llama (one capture)."""
    if "real_capture" not in request.keywords:
        monkeypatch.setattr(cli, "_program", lambda model: tiny_program)
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
    r = run("plan", "tiny-llama", "--target-len", "64k", "--profile", "rtx4090", "--json")
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
