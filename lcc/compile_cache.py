"""The compile cache: a finished artifact kept under the hash of everything that changes it.

An identical ``lcc compile`` then links (or copies) the stored artifact into ``--out`` instead of
compiling again. The key (:func:`key_inputs`) is the SHA-256 of: the weights hash and model id,
target length, the passes in canonical spelling or, when planning, the plan's inputs (quality
level, memory budget, a hash of the quality records the planner reads), the hardware profile
(name and a hash of its numbers: it prices the plan and the report's cost curves), backend,
target, dtype, KV-cache dtype, and lcc's version with a hash of its source files plus torch's and
transformers' versions (a changed lcc never reuses an older output). It needs no weights in
memory: the weights hash comes from the loader's cheap hook when there is one.
An entry ``$LCC_CACHE/compiled/<key>/`` holds ``artifact/`` (with its ``checksums.json``) and
``key.json`` (the inputs). A hit is verified (:func:`lcc.integrity.verify`) before use; a corrupt
or stale entry is deleted, with one line on stderr, and the artifact compiled again. The least
recently used entries go once the cache passes ``LCC_COMPILE_CACHE_MAX`` bytes (default 10 GiB; 0: off).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import lcc
from lcc.errors import UsageError

MAX_ENV = "LCC_COMPILE_CACHE_MAX"
DEFAULT_MAX_BYTES = 10 << 30
ARTIFACT = "artifact"
KEY_FILE = "key.json"
FORMAT = 1  # of an entry's layout and key.json


def root() -> Path:
    """Where entries live: ``$LCC_CACHE/compiled``."""
    from lcc.models.loader import cache_dir

    return cache_dir() / "compiled"


def max_bytes() -> int:
    """The size bound of the cache in bytes (``LCC_COMPILE_CACHE_MAX``; 0 turns the cache off)."""
    text = os.environ.get(MAX_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    if not text.isdigit():
        raise UsageError(f"{MAX_ENV}={text!r}: give the compile cache's size bound as a number of bytes, "
                         f"e.g. {DEFAULT_MAX_BYTES}")
    return int(text)


def enabled() -> bool:
    """Whether compiles use the cache (``LCC_COMPILE_CACHE_MAX=0`` turns it off, as ``--no-cache`` does once)."""
    return max_bytes() > 0


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 over lcc's own files (code, profiles, shipped records, sample text), by relative path."""
    base = Path(lcc.__file__).parent
    h = hashlib.sha256()
    for path in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def cached_weights_hash(name: str) -> str | None:
    """The weights hash of model ``name`` without loading its weights, when the loader knows it from the files'
    identity (:func:`lcc.models.loader.cached_weights_hash`); ``None`` otherwise (the caller loads the model)."""
    from lcc.models import loader

    return loader.cached_weights_hash(name)


def records_hash(weights_hash: str) -> str:
    """SHA-256 of the quality records the planner reads for these weights: every shipped file (the prior's
    reference is one) and the user's file for the weights, if any."""
    from lcc.quality.records import SHIPPED, user_dir

    h = hashlib.sha256()
    for path in [*sorted(SHIPPED.glob("*.json")), user_dir() / f"{weights_hash}.json"]:
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def profile_inputs(device: str) -> dict | None:
    """The hardware profile a compile prices with (the plan, the report's cost curves): its name and a hash of
    its numbers (a recalibrated ``cpu`` is another profile); ``None`` without lcc.cost."""
    try:
        from lcc.cost.hardware import load_profile
    except ImportError:
        return None
    profile = load_profile(device)
    return {"name": profile.name, "hash": _sha256_json(profile.to_dict())}


def plan_inputs(weights_hash: str, quality: str = "balanced", memory_budget: float | None = None) -> dict:
    """What a planned compile's plan depends on besides the model, the length and the profile (the planner's
    code is in :func:`source_hash`): the quality level, the memory budget, the quality records."""
    return {"quality": quality, "memory_budget": memory_budget, "records_hash": records_hash(weights_hash)}


def key_inputs(weights_hash: str, model_id: str, target_len: int, backend: str, passes, profile: dict | None,
               plan: dict | None, target: str | None, dtype: str, kv_cache_dtype: str | None) -> dict:
    """Everything that changes a compile's output. ``passes``: the given PassSpecs (``None`` when planning);
    ``profile``: :func:`profile_inputs`; ``plan``: :func:`plan_inputs` when planning."""
    import torch
    import transformers

    return {"format": FORMAT, "weights_hash": weights_hash, "model_id": model_id, "target_len": int(target_len),
            "passes": None if passes is None else [str(p) for p in passes], "profile": profile,
            "plan": plan if passes is None else None, "backend": backend, "target": target, "dtype": dtype,
            "kv_cache_dtype": kv_cache_dtype, "lcc_version": lcc.__version__, "lcc_source": source_hash(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def key_of(inputs: dict) -> str:
    """The cache key of :func:`key_inputs`' dict."""
    return _sha256_json(inputs)


@contextlib.contextmanager
def _locked():
    """An exclusive lock on the cache for the short steps that change or read an entry's files."""
    import fcntl

    root().mkdir(parents=True, exist_ok=True)
    with open(root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def note(text: str) -> None:
    """One line on stderr (what the cache did that the user should know)."""
    print(f"lcc: compile cache: {text}", file=sys.stderr)


def _check_entry(entry: Path, key: str) -> None:
    """Refuse (UsageError) an entry whose key file does not hash to ``key`` or whose artifact fails its checksums."""
    from lcc.integrity import verify

    try:
        inputs = json.loads((entry / KEY_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise UsageError(f"{entry / KEY_FILE} is missing or not JSON")
    if not isinstance(inputs, dict) or key_of(inputs) != key:
        raise UsageError(f"{entry / KEY_FILE} does not hash to its entry's key (stale)")
    verify(entry / ARTIFACT)


def _link_tree(src: Path, dst: Path) -> None:
    """The regular files of ``src`` into a new ``dst``, hard-linked where the file system allows, else copied."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def restore(key: str, out: Path, force: bool) -> bool:
    """On a hit, the stored artifact installed at ``out`` (atomically); ``False`` on a miss. A corrupt or
    stale entry is deleted with a note, and is a miss."""
    from lcc.outdir import install, make_tmp

    entry = root() / key
    if not entry.is_dir():
        return False
    with _locked():
        try:
            _check_entry(entry, key)
        except UsageError as e:
            note(f"entry {key[:12]} is damaged ({e}); deleted it, compiling again")
            shutil.rmtree(entry, ignore_errors=True)
            return False
        tmp = make_tmp(out)
        try:
            _link_tree(entry / ARTIFACT, tmp)
            install(tmp, out, force)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        os.utime(entry)  # most recently used
    return True


def store(key: str, inputs: dict, artifact_dir: Path) -> None:
    """Keep the finished artifact in ``artifact_dir`` under ``key``, then bound the cache's size. A failure
    to store (disk full, a read-only cache) is a note, never the compile's failure."""
    from lcc.outdir import make_tmp

    limit = max_bytes()
    size = _bytes(artifact_dir)
    if size > limit:
        note(f"not stored: the artifact's {size} bytes exceed {MAX_ENV}={limit}")
        return
    try:
        with _locked():
            entry = root() / key
            tmp = make_tmp(entry)
            try:
                _link_tree(Path(artifact_dir), tmp / ARTIFACT)
                (tmp / KEY_FILE).write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
                if entry.exists():
                    shutil.rmtree(entry)
                os.rename(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            evict(limit, keep=key)
    except OSError as e:
        note(f"not stored ({e})")


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def entries() -> list[Path]:
    """The cache's entries, most recently used first."""
    if not root().is_dir():
        return []
    found = [p for p in root().iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def evict(limit: int, keep: str | None = None) -> list[Path]:
    """Delete the least recently used entries (never ``keep``) until the cache holds at most ``limit`` bytes."""
    removed, total = [], 0
    for entry in entries():
        size = _bytes(entry)
        if total + size > limit and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        else:
            total += size
    return removed
