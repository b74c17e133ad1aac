"""The artifact manifest ``lcc.json``: its schema, format version, and deterministic write / checked load.

A :class:`Manifest` field is a top-level key of ``lcc.json``; adding one is one line here (give it a
default so the artifacts of this format already written still load).  ``write`` is deterministic
(sorted keys, no timings), so the same inputs give the same bytes.  ``load`` refuses, with one line
naming the file and saying to recompile, a missing or unreadable ``lcc.json``, a missing or mistyped
field, and a format or lcc version this lcc cannot read.  Format 1 had no ``format`` key and a
pickled torch artifact; format 2 is graph JSON + safetensors (``lcc/backends/torch_export.py``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import lcc
from lcc.errors import UsageError

FORMAT = 2  # bump when an artifact written before cannot be read the same way
FILE = "lcc.json"


@dataclass(frozen=True)
class Manifest:
    """What ``lcc run`` / ``lcc eval`` need to load an artifact, and what it was compiled from."""

    model: dict  # {"id", "weights_hash", "spec"}
    target_len: int
    backend: str
    plan: dict  # {"source", "passes", "reason", "device", ...}
    cache: dict  # the CacheLayout's fields
    entries: dict  # entry point -> {"inputs", "outputs"}: [{"name", "shape", "dtype"}]
    files: list  # the lowered files, sorted
    lowering: dict  # {"native", "fallbacks", "notes"}
    checks: list  # [{"stage", "exact", "ok"}]
    dtype: str = "float32"  # weights and compute (the cache's own dtype is in ``cache``)
    target: str = "cpu"  # where it runs: cpu, cuda, cuda:sm_80, cuda:sm_90 (lcc.target)
    lcc_version: str = lcc.__version__
    format: int = FORMAT

    @property
    def model_id(self) -> str:
        return self.model["id"]

    @property
    def weights_hash(self) -> str:
        return self.model["weights_hash"]

    def __getitem__(self, key: str):
        """``manifest["plan"]``: the field of that ``lcc.json`` key (a KeyError for any other)."""
        if key not in FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, out_dir) -> Path:
        path = Path(out_dir) / FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, d: dict, where: str = FILE) -> "Manifest":
        """The manifest of ``d`` (the parsed ``lcc.json`` at ``where``), its version and fields checked."""
        if not isinstance(d, dict):
            raise _unreadable(where, "is not a JSON object")
        check_version(d, where)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f)]
        if missing:
            raise _unreadable(where, f"lacks {', '.join(missing)}")
        for f in dataclasses.fields(cls):
            kind = TYPES[f.name]
            if f.name in d and (not isinstance(d[f.name], kind) or isinstance(d[f.name], bool) != (kind is bool)):
                raise _unreadable(where, f"has {f.name} of type {type(d[f.name]).__name__}, not {kind.__name__}")
        check_cache(d["cache"], where)
        return cls(**{k: v for k, v in d.items() if k in FIELDS})


FIELDS = frozenset(f.name for f in dataclasses.fields(Manifest))
TYPES = {f.name: {"dict": dict, "list": list, "int": int, "str": str, "bool": bool}[f.type]
         for f in dataclasses.fields(Manifest)}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _unreadable(where: str, what: str) -> UsageError:
    return UsageError(f"{where} {what}: it was written by another lcc version or is damaged; "
                      "recompile the artifact with `lcc compile`")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3])


def check_version(d: dict, where: str) -> None:
    """Refuse a format other than :data:`FORMAT` and an artifact written by a newer lcc than this one."""
    fmt = d.get("format", 1)
    if fmt != FORMAT:
        age = "a newer" if isinstance(fmt, int) and fmt > FORMAT else "an older"
        raise UsageError(f"{where} is artifact format {fmt}, written by {age} lcc; this lcc "
                         f"{lcc.__version__} reads format {FORMAT}: recompile the artifact with `lcc compile`")
    version = d.get("lcc_version")
    try:
        newer = _version(version) > _version(lcc.__version__)
    except (AttributeError, TypeError, ValueError):
        raise _unreadable(where, f"has lcc_version {version!r}, not a version like {lcc.__version__}")
    if newer:
        raise UsageError(f"{where} was written by lcc {version}, newer than this lcc {lcc.__version__}: "
                         "recompile the artifact with this lcc (`lcc compile`) or upgrade lcc")


def check_cache(cache: dict, where: str) -> None:
    """Refuse a cache layout that :meth:`CacheLayout.from_dict` cannot rebuild."""
    from lcc.capture.program import CacheLayout

    try:
        CacheLayout.from_dict(cache)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise _unreadable(where, f"has a cache layout this lcc cannot read ({type(e).__name__}: {e})")


def load(out_dir) -> Manifest:
    """The checked manifest of the artifact directory ``out_dir``."""
    path = Path(out_dir) / FILE
    if not path.is_file():
        raise UsageError(f"{out_dir} is not an lcc artifact (no {FILE}): run `lcc compile ... --out {out_dir}` first")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _unreadable(str(path), f"is not readable JSON ({type(e).__name__})")
    return Manifest.from_dict(d, str(path))


def cache_names(cache) -> list[str]:
    """The cache tensors' names in entry-point order: ``k_0, v_0, k_1, ...`` or the layout's own."""
    if cache.tensors:
        return [name for name, _, _ in cache.tensors]
    return [f"{kv}_{i}" for i in range(cache.layers) for kv in ("k", "v")]


def entry_signatures(program) -> dict:
    """Inputs and outputs of ``prefill``, ``decode`` and (when the program has it) ``prefill_logits``, the cache
    tensors as ``program.cache.empty()`` makes them."""
    cache = [{"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
             for name, t in zip(cache_names(program.cache), program.cache.empty(device="meta"))]
    b, v = program.cache.batch, program.spec.vocab
    logits = {"name": "logits", "shape": [b, 1, v], "dtype": "float32"}
    ids = {"name": "input_ids", "shape": [b, "S"], "dtype": "int64"}
    signatures = {
        "prefill": {"inputs": [ids, *cache], "outputs": [logits, *cache]},
        "decode": {"inputs": [{"name": "input_ids", "shape": [b, 1], "dtype": "int64"},
                              {"name": "position", "shape": [], "dtype": "int64"}, *cache],
                   "outputs": [logits, *cache]},
    }
    if "prefill_logits" in program.entries:  # every position's logits (perplexity)
        signatures["prefill_logits"] = {"inputs": [ids, *cache],
                                        "outputs": [{**logits, "shape": [b, "S", v]}, *cache]}
    return signatures


def load_runnable(out_dir, trust_native: bool = False):
    """(manifest, runnable with ``.entries``) of the artifact directory ``out_dir``.

    Before anything of it is loaded: the manifest's format and lcc version, every file against
    ``checksums.json`` and, for native code, that this machine built it (or ``trust_native``).
    Only the backend's own modules are imported (``lcc run`` starts in the time it takes to map the
    weights, not to import the compiler)."""
    from lcc.backends import get_backend
    from lcc.integrity import check_native, verify

    out_dir = Path(out_dir)
    manifest = load(out_dir)
    table = verify(out_dir)
    backend = get_backend(manifest.backend)
    native_files = getattr(backend, "native_files", None)
    if native_files is not None:
        check_native(out_dir, native_files(out_dir), table, trust_native)
    return manifest, backend.load(out_dir, manifest)


# tokenizer classes whose encoding and decoding are tokenizer.json's own (transformers 5 saves a tokenizer
# it rebuilt from tokenizer.json under "TokenizersBackend"); any other class may add to them
PLAIN_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
_ENCODING_KEYS = ("add_bos_token", "add_eos_token", "add_prefix_space", "clean_up_tokenization_spaces", "legacy",
                  "do_lower_case")


class PlainTokenizer:
    """An artifact's ``tokenizer.json`` read by the ``tokenizers`` library alone, for ``lcc run``: the ids and
    text transformers' tokenizer gives for a :data:`PLAIN_TOKENIZERS` class, without importing transformers
    (about two seconds of a command's start)."""

    def __init__(self, tokenizer, eos_token_id: int | None):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class _HFTokenizer:
    """transformers' tokenizer behind :class:`PlainTokenizer`'s interface."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_tokenizer(out_dir):
    """The artifact's tokenizer for generation (``encode``, ``decode`` skipping special tokens,
    ``eos_token_id``), or None when it has no ``tokenizer.json``: a :class:`PlainTokenizer` when its
    ``tokenizer_config.json`` names a plain class and no setting that changes the encoding, else
    transformers' ``AutoTokenizer``."""
    out_dir = Path(out_dir)
    if not (out_dir / "tokenizer.json").is_file():
        return None
    try:
        config = json.loads((out_dir / "tokenizer_config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        config = None
    plain = (isinstance(config, dict) and config.get("tokenizer_class") in PLAIN_TOKENIZERS
             and not any(config.get(k) for k in _ENCODING_KEYS))
    if not plain:
        from transformers import AutoTokenizer

        return _HFTokenizer(AutoTokenizer.from_pretrained(out_dir))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return PlainTokenizer(tokenizer, tokenizer.token_to_id(eos) if isinstance(eos, str) else None)
