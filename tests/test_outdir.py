"""``--out`` can never destroy: protected places, non-artifacts, symlinks and files refused, atomic swap."""

import os
from pathlib import Path

import pytest

from lcc.compile import compile_model
from lcc.errors import UsageError
from lcc.outdir import check_out, clean_stale, install, make_tmp


def test_compile_out_dot_with_force_keeps_the_working_directory(tmp_path):
    """Finding 2: ``--out . --force`` deleted the working directory's files."""
    (tmp_path / "sentinel").write_text("keep me")
    r = lcc_in(tmp_path, "compile", "tiny-llama", "--target-len", "128", "--pass", "flash", "--out", ".", "--force")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "working directory" in lines[0], r.stderr
    assert (tmp_path / "sentinel").read_text() == "keep me"


def lcc_in(cwd, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "lcc", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.parametrize("where,why", [("cwd", "the working directory"), ("parent", "a parent of the working"),
                                       ("home", "the home directory"), ("root", "the root directory")])
def test_protected_places_are_refused_even_with_force(tmp_path, monkeypatch, where, why):
    work = tmp_path / "home" / "projects" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = {"cwd": Path("."), "parent": Path(".."), "home": Path("~"), "root": Path("/")}[where]
    with pytest.raises(UsageError, match=why):
        check_out(out, force=True)


def test_a_non_artifact_directory_is_replaced_only_when_empty(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "thesis.tex").write_text("x")
    with pytest.raises(UsageError, match="not an lcc artifact"):
        check_out(tmp_path / "data", force=True)
    (tmp_path / "empty").mkdir()
    assert check_out(tmp_path / "empty", force=True) == (tmp_path / "empty").resolve()


def test_files_symlinks_and_unwritable_parents_are_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_out(tmp_path / "f", force=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="symbolic link"):
        check_out(tmp_path / "link", force=True)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(UsageError, match="not a writable directory"):
            check_out(tmp_path / "ro" / "a", force=False)


def test_a_directory_created_at_out_during_the_compile_is_kept(tmp_path):
    """Finding 3: the existence check is repeated at the end (without --force nothing is replaced)."""
    out = tmp_path / "a"
    check_out(out, force=False)
    tmp = make_tmp(out)
    (tmp / "lcc.json").write_text("{}")
    out.mkdir()
    (out / "mine").write_text("user data")
    with pytest.raises(UsageError, match="--force"):
        install(tmp, out, force=False)
    assert (out / "mine").read_text() == "user data"


def test_a_failed_swap_restores_the_old_artifact(tmp_path, monkeypatch):
    """Finding 4: the old artifact is renamed aside, the new one in; a failure puts the old one back."""
    out = tmp_path / "a"
    out.mkdir()
    (out / "lcc.json").write_text("old")
    tmp = make_tmp(out)
    (tmp / "lcc.json").write_text("new")
    real_rename, calls = os.rename, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new artifact into place
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError):
        install(tmp, out, force=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert (out / "lcc.json").read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if ".lcc-old-" in p.name]


def test_stale_temporaries_of_killed_compiles_are_removed(tmp_path, tiny):
    dead = tmp_path / ".a.lcc-tmp-999999999-x"  # no such pid
    dead.mkdir()
    (dead / "prefill.json").write_text("half")
    alive = tmp_path / f".a.lcc-tmp-{os.getpid()}-y"  # a compile still running (this process)
    alive.mkdir()
    assert clean_stale(tmp_path / "a") == [dead]
    compile_model(tiny("llama"), 64, "torch", [], tmp_path / "a")
    assert not dead.exists() and alive.exists()
    assert (tmp_path / "a" / "lcc.json").is_file()
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == oct(0o755)


def test_a_plot_or_output_file_in_a_read_only_place_is_refused_before_any_work(tmp_path):
    """Issue 20 finding 6: a read-only --plot was found only after the work."""
    from lcc.outdir import check_output_file

    with pytest.raises(UsageError, match="give a .png path"):
        check_output_file(tmp_path / "a.jpg", "--plot", ".png")
    assert check_output_file(tmp_path / "new" / "a.png", "--plot", ".png") == tmp_path / "new" / "a.png"
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(UsageError, match="cannot write there"):
            check_output_file(tmp_path / "ro" / "a.png", "--plot", ".png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        check_output_file(tmp_path / "d.png", "--plot", ".png")
