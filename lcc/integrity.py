"""Artifact integrity: ``checksums.json``, paths confined to the artifact, and the local record of native code.

``write_checksums`` records the SHA-256 and size of every file of an artifact directory (``lcc.json``
included, ``checksums.json`` itself excluded); ``verify`` refuses, with one line naming the file, a
file missing, changed, added or a symbolic link.  This protects against corruption and against files
swapped alone, not against someone who rewrites ``checksums.json`` too (nothing is signed).
``inside`` resolves a path a backend manifest names within the artifact or refuses it.
Native code (TVM libraries, AOTInductor packages) loads only when this machine built it (its hash is
in ``$LCC_CACHE/built.json``, written by ``lcc compile``: :func:`record_built`) or the user trusts it.

Hashing an artifact's weights takes about a second per 500 MB on every load, so ``verify`` remembers, in
``$LCC_CACHE/verified.json``, the SHA-256 of each large file it has read together with the file's identity
(device, inode, size, modification and status-change times in nanoseconds).  A file whose identity is
unchanged since it was hashed is not read again: any write to it, a copy, a rename over it or a restore
with its old modification time changes the status-change time, which no user can set.  A file changed less
than :data:`SETTLE_NS` before it was hashed is not remembered (as git's "racy" index entries), so a write
that follows the hash within one tick of the file-system clock cannot keep the identity it was hashed under.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from lcc.errors import UsageError

FILE = "checksums.json"
BUILT = "built.json"
VERIFIED = "verified.json"
REMEMBER_BYTES = 1 << 24  # files at least this large have their hash remembered by identity (the weights)
REMEMBER_FILES = 256  # identities kept in VERIFIED (the newest)
SETTLE_NS = 2_000_000_000  # a file changed this recently (ns) when hashed is not remembered
RECOMPILE = "recompile it with `lcc compile`"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, symbolic links or other non-files) under ``root`` as relative POSIX paths."""
    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                odd.append((base / name).relative_to(root).as_posix())
                dirnames.remove(name)
        for name in filenames:
            p = base / name
            rel = p.relative_to(root).as_posix()
            (files if p.is_file() and not p.is_symlink() else odd).append(rel)
    return sorted(files), sorted(odd)


def write_checksums(out_dir) -> Path:
    """Write ``checksums.json`` for every file now in ``out_dir``; its path."""
    root = Path(out_dir)
    files, odd = _walk(root)
    if odd:
        raise RuntimeError(f"{root / odd[0]} is not a regular file: an artifact holds regular files only")
    table = {rel: {"sha256": sha256(root / rel), "bytes": (root / rel).stat().st_size}
             for rel in files if rel != FILE}
    path = root / FILE
    path.write_text(json.dumps({"algorithm": "sha256", "files": table}, indent=2, sort_keys=True) + "\n")
    return path


def _damaged(path, what: str) -> UsageError:
    return UsageError(f"{path} {what}: the artifact is damaged or was modified; {RECOMPILE}")


def read_checksums(out_dir) -> dict[str, dict]:
    """The checked file table of ``out_dir/checksums.json`` (relative path -> {"sha256", "bytes"})."""
    path = Path(out_dir) / FILE
    if not path.is_file() or path.is_symlink():
        raise UsageError(f"{path} is missing: the artifact was written by an older lcc or is incomplete; {RECOMPILE}")
    try:
        d = json.loads(path.read_text())
        table = d["files"]
        ok = d.get("algorithm") == "sha256" and isinstance(table, dict) and all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
            for v in table.values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise _damaged(path, "is not a readable checksum table")
    for rel in table:
        _relative(out_dir, rel, FILE)
    return table


def verify(out_dir) -> dict[str, dict]:
    """Refuse (one line naming the file) an artifact whose files differ from ``checksums.json``; the table."""
    root = Path(out_dir)
    table = read_checksums(root)
    files, odd = _walk(root)
    if odd:
        raise _damaged(root / odd[0], "is a symbolic link or not a regular file (an artifact holds regular files)")
    extra = [f for f in files if f != FILE and f not in table]
    if extra:
        raise _damaged(root / extra[0], f"is not listed in {FILE}")
    known = _verified()
    learned = {}
    for rel, want in sorted(table.items()):
        p = root / rel
        if not p.is_file():
            raise _damaged(p, "is missing")
        st = p.stat()
        if st.st_size != want["bytes"]:
            raise _damaged(p, f"has {st.st_size} bytes, not the {want['bytes']} recorded in {FILE}")
        key = _identity(st)
        if st.st_size >= REMEMBER_BYTES and known.get(key) == want["sha256"]:
            continue
        if sha256(p) != want["sha256"]:
            raise _damaged(p, f"does not match its SHA-256 recorded in {FILE}")
        if st.st_size >= REMEMBER_BYTES and _identity(p.stat()) == key and _settled(st):
            learned[key] = want["sha256"]  # unchanged while it was read, and not changed just before
    if learned:
        _remember(known, learned)
    return table


def _settled(st: os.stat_result) -> bool:
    import time

    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= SETTLE_NS


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _verified_path() -> Path:
    from lcc.models.loader import cache_dir

    return cache_dir() / VERIFIED


def _verified() -> dict[str, str]:
    """File identity -> the SHA-256 ``verify`` computed for it (empty when the record is absent or unreadable)."""
    try:
        d = json.loads(_verified_path().read_text())
        return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, str)}
    except (OSError, ValueError, AttributeError):
        return {}


def _remember(known: dict[str, str], learned: dict[str, str]) -> None:
    """Add ``learned`` to the record (the newest REMEMBER_FILES identities); a record that cannot be written
    only costs the next load a re-read."""
    import tempfile

    merged = {k: v for k, v in known.items() if k not in learned} | learned
    path = _verified_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verified-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(dict(list(merged.items())[-REMEMBER_FILES:]), f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass


def _relative(root: Path, rel, where: str) -> PurePosixPath:
    """``rel`` (named in ``where``) as a path that, read as written, stays in ``root``."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise _damaged(Path(root) / where, f"names a file {rel!r} that is not a plain relative path")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise _damaged(Path(root) / where, f"names {rel!r}, outside the artifact directory")
    return pure


def inside(out_dir, rel, where: str) -> Path:
    """``out_dir / rel`` when ``rel`` (named in ``where``) is a relative path that stays in ``out_dir``."""
    root = Path(out_dir)
    path = root / _relative(root, rel, where)
    real_root = root.resolve()
    if path.is_symlink() or not (path.resolve() == real_root or real_root in path.resolve().parents):
        raise _damaged(root / where, f"names {rel!r}, a link out of the artifact directory")
    return path


def _built_path() -> Path:
    from lcc.models.loader import cache_dir

    return cache_dir() / BUILT


def built_hashes() -> set[str]:
    """SHA-256 of every native file ``lcc compile`` wrote on this machine."""
    try:
        d = json.loads(_built_path().read_text())
        return {h for h in d.get("sha256", []) if isinstance(h, str)}
    except (OSError, ValueError, AttributeError):
        return set()


def record_built(out_dir, names: list[str]) -> None:
    """Add the SHA-256 of the native files ``names`` of ``out_dir`` to ``$LCC_CACHE/built.json``."""
    if not names:
        return
    import fcntl
    import tempfile

    path = _built_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        hashes = built_hashes() | {sha256(Path(out_dir) / n) for n in names}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".built-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"sha256": sorted(hashes)}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def check_native(out_dir, names: list[str], table: dict[str, dict], trust: bool) -> None:
    """Refuse native files (named in the backend manifest, hashes from the verified ``table``) this machine did
    not build, unless ``trust``."""
    if trust or not names:
        return
    built = built_hashes()
    for name in names:
        entry = table.get(name)
        if entry is None:
            raise _damaged(Path(out_dir) / name, f"is native code not listed in {FILE}")
        if entry["sha256"] not in built:
            raise UsageError(f"{Path(out_dir) / name} is native code that was not compiled on this machine "
                             f"(not in {_built_path()}): {RECOMPILE} here, or pass --trust-native if you trust "
                             "where the artifact came from")


def backend_manifest(out_dir, name: str) -> dict:
    """The JSON object of a backend manifest (``tvm.json``, ``onnx.json``, ``triton.json``) in ``out_dir``."""
    path = inside(out_dir, name, name)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise _damaged(path, "is missing")
    except (OSError, UnicodeDecodeError, ValueError):
        raise _damaged(path, "is not readable JSON")
    if not isinstance(d, dict):
        raise _damaged(path, "is not a JSON object")
    return d


def listed(d: dict, key: str, where: str, out_dir) -> list[str]:
    """The file names under ``d[key]`` (a name, a list of names, a dict of names, or of {"file": name})."""
    value = d.get(key, {})
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    names = []
    for v in values:
        if isinstance(v, dict) and "file" in v:
            v = v["file"]
        if isinstance(v, list):
            names += listed({"x": v}, "x", where, out_dir)
            continue
        inside(out_dir, v, where)
        names.append(v)
    return names
