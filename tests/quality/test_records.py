"""Quality records: matching, the next-longer / extrapolated rules, the ratio baseline, the prior, bad files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lcc.errors import UsageError
from lcc.quality import Records, Row, load, prior_estimate, read_file

ROOT = Path(__file__).resolve().parents[2]
DYN = "rope-scaling:method=dynamic-ntk,factor=4"


def records() -> Records:
    rows = [Row(("flash",), 1024, ppl=5.0, passkey=0.8),  # the baseline: no passes at the trained length
            Row((DYN, "flash"), 2048, ppl=6.0, passkey=1.0),
            Row((DYN, "flash"), 4096, ppl=8.0, passkey=0.4),
            Row(("flash",), 4096, ppl=500.0, passkey=0.0)]
    return Records("m", "abc", 1024, rows)


def test_the_shipped_smollm2_records_are_what_the_measurement_files_give():
    r = subprocess.run([sys.executable, str(ROOT / "bench/quality_records.py"), "--check"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_length_between_measurements_uses_the_next_longer_one():
    est = records().estimate([DYN, "flash"], 3000)
    assert est.length == 4096 and not est.extrapolated and est.source == "record"
    assert est.ppl == 8.0 and est.ppl_ratio == pytest.approx(8.0 / 5.0)
    assert est.retrieval_ratio == pytest.approx(0.4 / 0.8)


@pytest.mark.parametrize("last_first", [True, False])
def test_a_cell_of_two_protocol_rows_gives_the_first_window_ratio_and_the_passkey(last_first):
    """bench/rope_table.py writes a cell as a first-window row (with the passkey) and a last-4096 row (without):
    whichever comes first, the estimate divides each figure by the baseline of its own protocol and keeps the
    passkey (a candidate without it fails every quality level that asks for retrieval)."""
    rows = [Row(("flash",), 1024, ppl=5.0, passkey=0.8), Row(("flash",), 1024, ppl=10.0, ppl_protocol="last-4096")]
    cell = [Row((DYN, "flash"), 2048, ppl=12.0, ppl_protocol="last-4096"), Row((DYN, "flash"), 2048, ppl=6.0,
                                                                                passkey=1.0, passkey_trials=9)]
    est = Records("m", "abc", 1024, rows + (cell if last_first else cell[::-1])).estimate([DYN, "flash"], 2048)
    assert est.ppl == 6.0 and est.ppl_ratio == pytest.approx(6.0 / 5.0)
    assert est.passkey == 1.0 and est.retrieval_ratio == pytest.approx(1.0 / 0.8)


def test_past_the_longest_measurement_the_estimate_is_extrapolated():
    est = records().estimate([DYN], 8192)
    assert est.extrapolated and est.length == 4096 and "extrapolated" in est.detail


def test_exact_passes_do_not_change_the_match():
    """flash and attention-chunked change no output: the same record serves both, and none at all."""
    a = records().estimate([DYN, "flash"], 2048)
    b = records().estimate([DYN, "attention-chunked:chunk=64"], 2048)
    c = records().estimate([DYN], 2048)
    assert a == b == c and a.ppl == 6.0


def test_parameters_must_match_exactly():
    assert records().estimate(["rope-scaling:method=dynamic-ntk,factor=8"], 2048) is None


def test_the_baseline_is_the_unmodified_model_at_its_trained_length():
    base = records().baseline()
    assert base.length == 1024 and base.ppl == 5.0
    unmodified = records().estimate([], 4096)
    assert unmodified.ppl_ratio == pytest.approx(100.0) and unmodified.retrieval_ratio == 0.0


def test_a_model_without_records_gets_the_prior_and_the_command_that_measures_it():
    ref = records()
    est = prior_estimate([DYN], 1024, 256, ref, "lcc quality tiny-llama --lengths 1k")
    assert est.source == "prior" and "lcc quality tiny-llama" in est.detail
    assert est.ppl_ratio == pytest.approx(8.0 / 5.0)  # the reference's ratio at the same 4x
    bare = prior_estimate(["flash"], 1024, 256, ref, "lcc quality x")
    assert bare.retrieval_ratio == 0.0 and "no position method" in bare.detail
    inside = prior_estimate(["flash"], 256, 256, ref, "lcc quality x")
    assert inside.source == "exact" and inside.ppl_ratio == 1.0


def test_user_rows_replace_shipped_rows(tmp_path, monkeypatch):
    import lcc.quality.records as qr

    shipped, user = tmp_path / "shipped", tmp_path / "user"
    records().write(shipped / "abc.json")
    mine = Records("m", "abc", 1024, [Row((DYN, "flash"), 2048, ppl=7.0, passkey=0.9, source="mine")])
    mine.write(user / "abc.json")
    monkeypatch.setattr(qr, "SHIPPED", shipped)
    got = load("abc", trained_len=1024, user=user)
    assert got.estimate([DYN], 2048).ppl == 7.0 and len(got.files) == 2
    assert got.estimate([DYN], 4096).ppl == 8.0  # the shipped row it did not replace


@pytest.mark.parametrize("text,fragment", [
    ("{not json", "not readable JSON"),
    (json.dumps({"format": 99}), "format 99"),
    (json.dumps({"format": 1, "weights_hash": "other", "trained_len": 1024, "rows": []}), "for weights 'other'"),
    (json.dumps({"format": 1, "weights_hash": "abc", "trained_len": 1024,
                 "rows": [{"passes": ["flash"], "length": 1024, "ppl": -3}]}), "ppl=-3"),
    (json.dumps({"format": 1, "weights_hash": "abc", "trained_len": 1024,
                 "rows": [{"passes": ["warp"], "length": 1024}]}), "unknown pass 'warp'"),
    (json.dumps({"format": 1, "weights_hash": "abc", "trained_len": 1024,
                 "rows": [{"passes": [], "length": 1024, "passkey": 2}]}), "passkey=2"),
])
def test_corrupt_or_foreign_records_are_one_usage_error(tmp_path, text, fragment):
    path = tmp_path / "abc.json"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        read_file(path, "abc")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_user_row_replaces_the_shipped_row_whatever_its_spelling(tmp_path, monkeypatch):
    """``factor=4`` (the planner's spelling) and ``factor=4.0`` (a PassSpec's) are the same measurement."""
    import lcc.quality.records as qr

    shipped, user = tmp_path / "shipped", tmp_path / "user"
    records().write(shipped / "abc.json")
    respelled = "rope-scaling:method=dynamic-ntk,factor=4.0"
    Records("m", "abc", 1024, [Row((respelled,), 2048, ppl=7.5, passkey=0.9)]).write(user / "abc.json")
    monkeypatch.setattr(qr, "SHIPPED", shipped)
    got = load("abc", trained_len=1024, user=user)
    assert [r.ppl for r in got.rows if r.length == 2048] == [7.5]
