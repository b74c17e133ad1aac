"""The weights hash of a model's files, from file identity: each file's SHA-256 is read once.

A file's digest is, in order: the name of its blob when it lives in a Hugging Face hub cache
(``.../blobs/<sha256>``: the hub names LFS blobs by their content's SHA-256), else the entry
of ``$LCC_CACHE/hashes.json`` keyed by its resolved path whose size and ``mtime_ns`` still
match, else the SHA-256 of its bytes, stored there for the next load (written atomically).
The weights hash is the first 16 hex digits of one file's digest, or of the SHA-256 of
the files' digests in path order when there are several.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

HASHES_FILE = "hashes.json"
_HUB_BLOB = re.compile(r"^[0-9a-f]{64}$")


def _cache_file() -> Path:
    from lcc.models.loader import cache_dir

    return cache_dir() / HASHES_FILE


def sha256_file(path: Path) -> str:
    """The full SHA-256 of ``path``'s bytes (the one place weight files are read for hashing)."""
    from lcc.integrity import sha256

    return sha256(path)


def _read_cache() -> dict:
    try:
        doc = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_cache(entries: dict) -> None:
    """Replace hashes.json atomically, keeping only entries whose files still exist."""
    target = _cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    live = {k: v for k, v in entries.items() if os.path.exists(k)}
    fd, tmp = tempfile.mkstemp(prefix=f".{HASHES_FILE}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(live, f, indent=1, sort_keys=True)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _identity(path: Path) -> tuple[str, dict]:
    resolved = path.resolve()
    st = resolved.stat()
    return str(resolved), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_digest(path: Path, compute: bool = True) -> str | None:
    """``path``'s full SHA-256 from its hub blob name or the hash cache; read and cached when ``compute``."""
    key, ident = _identity(path)
    if _HUB_BLOB.match(Path(key).name) and Path(key).parent.name == "blobs":
        return Path(key).name
    cache = _read_cache()
    entry = cache.get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in ident.items()) and entry.get("sha256"):
        return entry["sha256"]
    if not compute:
        return None
    digest = sha256_file(Path(key))
    cache = _read_cache()  # re-read: another process may have added entries meanwhile
    cache[key] = {**ident, "sha256": digest}
    _write_cache(cache)
    return digest


def weights_hash(paths: list[Path], compute: bool = True) -> str | None:
    """The 16-hex-digit weights hash of ``paths``; ``None`` when ``compute`` is off and a digest is not known."""
    digests = [file_digest(p, compute) for p in sorted(paths)]
    if any(d is None for d in digests):
        return None
    if len(digests) == 1:
        return digests[0][:16]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]
