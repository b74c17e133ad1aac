"""Where an artifact is written: an ``--out`` that can never destroy, and the atomic swap into it.

``check_out`` runs before any work and again at the end: ``--out`` may not be the
working directory, one of its parents, the home directory or ``/``; an existing
``--out`` is replaced only with ``--force`` and only when it is an lcc artifact (it
holds ``lcc.json``) or empty. ``install`` renames the old artifact aside, renames the
new one in, then deletes the old one; on any failure the old one is put back.
Temporary directories carry the compiling process's pid, so the next compile to the
same place removes those of killed compiles (:func:`clean_stale`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lcc.errors import UsageError

TMP_TAG = ".lcc-tmp-"
OLD_TAG = ".lcc-old-"


def _protected(path: Path) -> str | None:
    cwd = Path.cwd().resolve()
    if path == cwd:
        return "the working directory"
    if path == Path.home().resolve():
        return "the home directory"
    if path == Path(path.anchor):
        return "the root directory"
    if path in cwd.parents:
        return "a parent of the working directory"
    return None


def check_out(out: Path | str, force: bool) -> Path:
    """The resolved ``--out``; a usage error when writing there could destroy something or cannot work."""
    out = Path(out).expanduser()
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link: give a real directory path")
    path = out.resolve()
    why = _protected(path)
    if why:
        raise UsageError(f"--out {out} is {why}: give a new directory, e.g. --out out/model-32k")
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--out {out} is a file, not a directory: give a directory path")
        if not force:
            raise UsageError(f"{out} exists: pass --force to replace it, or choose another --out")
        if not (path / "lcc.json").is_file() and any(path.iterdir()):
            raise UsageError(f"--out {out} is a non-empty directory that is not an lcc artifact (no lcc.json): "
                             "lcc replaces only its own artifacts; choose another --out")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {parent} is not a writable directory; choose another --out")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove temporary directories that killed compiles left beside ``out``; the list removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for tag in (TMP_TAG, OLD_TAG):
        for p in out.parent.glob(f".{out.name}{tag}*"):
            pid = p.name[len(f".{out.name}{tag}"):].split("-", 1)[0]
            if p.is_dir() and not p.is_symlink() and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def make_tmp(out: Path) -> Path:
    """A fresh temporary directory beside ``out`` (same file system, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_TAG}{os.getpid()}-", dir=out.parent))


def install(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished ``tmp`` to ``out``: re-check ``out``, swap atomically, restore the old one on failure."""
    check_out(out, force)
    os.chmod(tmp, 0o755)
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD_TAG}{os.getpid()}-", dir=out.parent))
    os.rename(out, old / "artifact")
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / "artifact", out)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_output_file(path: str | Path, flag: str, suffix: str) -> Path:
    """A file lcc will write (``--plot``, ``--out`` of train-memory): the right suffix, in a writable directory.

    Checked before any work, so a read-only place is found at once rather than after minutes of it."""
    path = Path(path).expanduser()
    if path.suffix != suffix:
        raise UsageError(f"{flag} {path}: give a {suffix} path")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: give a {suffix} file path")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: cannot write there; give a path in a writable directory")
    return path
