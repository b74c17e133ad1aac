"""``lcc quality``: rows measured with the planner's pass lists, stored in the user's records, read back, resumed."""

import json

import pytest

from lcc.quality.measure import BASELINE, method_passes, parse_methods


def test_method_pass_lists_come_from_the_position_passes_plan_hooks():
    from lcc.cost.planner import candidate_pass_lists
    from lcc.errors import UsageError

    plans = method_passes(16384, 8192)
    assert plans["none"] == BASELINE
    assert plans["ntk"] == ("rope-scaling:method=ntk,factor=2", "flash")  # factor = L / trained length
    assert plans["rerope"] == ("rerope:window=2048",)  # window T / 4, no flash (rerope is the attention)
    assert plans["kv-sink-cache"][0] == "kv-sink-cache:sinks=4,window=8188"  # window T - 4
    candidates = {tuple(c) for c in candidate_pass_lists(16384, trained_len=8192)}
    assert all(p in candidates for m, p in plans.items() if m != "none")  # what the planner would compile
    assert list(method_passes(8192, 8192)) == ["none"]  # within the trained length no method is planned
    for bad in ("ntk,nope", ""):
        with pytest.raises(UsageError):
            parse_methods(bad)


def test_quality_measures_stores_reads_back_and_resumes(tmp_path, tiny, capsys, monkeypatch):
    from lcc.cli import main
    from lcc.quality import load
    from lcc.quality.measure import records_path

    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("And God said, Let there be light: and there was light. " * 40)
    args = ["quality", "tiny-llama", "--lengths", "256,512", "--methods", "none,ntk,rerope", "--trials", "1",
            "--windows", "1", "--text", str(text), "--json"]
    capsys.readouterr()
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    got = {(tuple(r["passes"]), r["length"]) for r in rows}
    assert got == {(("flash",), 256), (("flash",), 512), (("rope-scaling:method=ntk,factor=2", "flash"), 512),
                   (("rerope:window=64",), 512)}  # the baseline (trained length 256) and each method at 512
    for r in rows:
        assert r["passkey_trials"] == 3 and r["ppl_protocol"] == "first-window" and r["ppl"] > 1
        assert r["device"] and r["date"] and r["lcc_version"] and r["source"].startswith("lcc quality tiny-llama")
    loaded = tiny("llama")
    assert records_path(loaded.weights_hash).is_file()
    records = load(loaded.weights_hash, "tiny-llama", 256)
    assert records.baseline().ppl == next(r["ppl"] for r in rows if r["length"] == 256)
    for r in rows:
        est = records.estimate(r["passes"], r["length"])
        assert (est.ppl, est.passkey, est.length, est.extrapolated) == (r["ppl"], r["passkey"], r["length"], False)
        assert est.ppl_ratio == pytest.approx(r["ppl"] / records.baseline().ppl)
    assert main(args) == 0  # resumable: nothing new to measure
    assert json.loads(capsys.readouterr().out)["rows"] == []
    assert len(load(loaded.weights_hash, "tiny-llama", 256).rows) == 4


@pytest.mark.parametrize("bad", [["--lengths", "0"], ["--lengths", "256", "--methods", "ntk,warp"],
                                 ["--lengths", "256", "--trials", "0"]])
def test_bad_quality_input_is_one_line_and_exit_2(bad, capsys):
    from lcc.cli import main

    capsys.readouterr()
    assert main(["quality", "tiny-llama", *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lcc: error:") and "\n" not in err
