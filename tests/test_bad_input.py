"""Issue 20's bad inputs: one line on stderr and exit 2 before the work that would fail; a full disk exits 3
with nothing left behind; an interrupt exits 130 with nothing half-written."""

import errno
import json
import math
import os
import signal

import pytest

from lcc.cli import DISK_FULL, main
from lcc.models import presets


def _one_line(capsys, code, argv, fragment):
    assert main(argv) == code
    captured = capsys.readouterr()
    assert not captured.err.startswith("\n"), captured.err
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert errors and errors[-1].startswith("lcc: error:") and fragment in errors[-1], captured.err
    assert "Traceback" not in captured.err and "" not in errors
    return errors[-1]


@pytest.mark.parametrize("preset", presets())
def test_diff_len_1_is_refused_for_every_preset(capsys, preset):
    _one_line(capsys, 2, ["diff", preset, "--len", "1"], "at least 3 tokens")


def test_compile_target_len_2_is_refused(capsys, tmp_path):
    _one_line(capsys, 2, ["compile", "tiny-llama", "--target-len", "2", "--pass", "flash", "--out",
                          str(tmp_path / "a")], "at least 3 tokens")
    assert list(tmp_path.iterdir()) == []


def test_compile_unknown_quality_is_refused_before_loading(capsys, tmp_path):
    _one_line(capsys, 2, ["compile", "tiny-llama", "--target-len", "1k", "--quality", "great", "--out",
                          str(tmp_path / "a")], "exact, balanced, retrieval or any")
    assert list(tmp_path.iterdir()) == []


def test_compile_where_no_candidate_meets_the_quality_names_the_level_that_would(capsys, tmp_path):
    """tiny-llama at 16x its trained length: the prior (smollm2's 128k records) retrieves nothing."""
    line = _one_line(capsys, 2, ["compile", "tiny-llama", "--target-len", "4k", "--out", str(tmp_path / "a"),
                                 "--no-cache"], "none meets quality=balanced")
    assert "--quality retrieval" in line and "more memory" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_prompt_of_invalid_utf8_is_refused(capsys):
    _one_line(capsys, 2, ["run", "tiny-llama", "--prompt", b"\xff".decode("utf-8", "surrogateescape")],
              "not valid UTF-8")


def test_a_cache_larger_than_memory_is_refused_before_allocating(capsys):
    _one_line(capsys, 2, ["run", "tiny-llama", "--prompt", "hi", "--max-new-tokens", str(10 ** 13)],
              "more than the")


@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-1"])
def test_train_memory_refuses_a_nonfinite_or_nonpositive_lr(capsys, tmp_path, lr):
    (tmp_path / "t.txt").write_text("some text " * 50)
    _one_line(capsys, 2, ["train-memory", "tiny-llama", "--lr", lr, "--text", str(tmp_path / "t.txt")], "--lr")


def test_diff_json_prints_null_not_nan(capsys, monkeypatch):
    import lcc.diff
    from lcc.diff import diff as real_diff

    def with_nan(*args, **kwargs):
        reports = real_diff(*args, **kwargs)
        reports[-1].kl = math.nan
        return reports

    monkeypatch.setattr(lcc.diff, "diff", with_nan)
    assert main(["diff", "tiny-llama", "--len", "16", "--json"]) in (0, 1)
    d = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert d["stages"][-1]["kl"] is None


def _compile_argv(tmp_path):
    return ["compile", "tiny-llama", "--target-len", "64", "--pass", "flash", "--out", str(tmp_path / "a")]


def test_a_full_disk_is_one_line_exit_3_and_leaves_nothing(capsys, tmp_path, monkeypatch):
    import lcc.report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "report.json"))

    monkeypatch.setattr(lcc.report, "write_report", full)
    line = _one_line(capsys, DISK_FULL, _compile_argv(tmp_path), "no space left")
    assert "report.json" in line
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor the temporary directory


def test_a_full_disk_in_a_native_writer_exits_3(capsys, tmp_path, monkeypatch):
    import lcc.backends.torch_export as te

    def full(self, path):
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, message: \"No space left on device\" })")

    monkeypatch.setattr(te.WeightWriter, "save", full)
    _one_line(capsys, DISK_FULL, _compile_argv(tmp_path), "no space left")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["raise", "signal", "swallowed"])
def test_an_interrupt_during_compile_exits_130_and_leaves_nothing_half_written(capsys, tmp_path, monkeypatch, how):
    import lcc.backends.torch_export as te

    lower = te.BACKEND.lower

    def interrupted(*args, **kwargs):
        if how == "raise":
            raise KeyboardInterrupt
        if how == "signal":
            os.kill(os.getpid(), signal.SIGINT)
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:  # a library that swallows it: the compile goes on, the exit code is still 130
            pass
        return lower(*args, **kwargs)

    monkeypatch.setattr(te.BACKEND, "lower", interrupted)
    assert main(_compile_argv(tmp_path)) == 130
    assert "Traceback" not in capsys.readouterr().err
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["a"] if how == "swallowed" else [])  # finished whole, or nothing at all
    if left:
        assert (tmp_path / "a" / "checksums.json").is_file()
