"""Quality records: measured perplexity and retrieval of a model under a pass list at a length.

One JSON file per model weights (``<weights_hash>.json``): the records that ship with lcc
(``lcc/quality/data``, built from the measurement files by ``bench/quality_records.py``) and
the user's own (``$LCC_CACHE/quality``, written by ``lcc quality``; a user row replaces a
shipped row for the same pass list and length). Each row keeps where it came from (device,
dtype, date, lcc version, source).

Rows are matched on the *quality-relevant* passes: the exact passes (``flash``, a sliding
window that covers the length, ...) change no output and are dropped from both sides, so
``rope-scaling:method=ntk,factor=4`` + ``flash`` and the same method with ``attention-chunked``
share a record. A target length between measured lengths uses the next longer measurement;
past the longest one the estimate is marked extrapolated. Figures are also given as ratios to
the baseline: the unmodified model at its trained length on the same text and prompts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lcc.errors import UsageError

FORMAT = 1
SHIPPED = Path(__file__).parent / "data"
PPL_PROTOCOLS = ("first-window", "last-4096")


def user_dir() -> Path:
    from lcc.models.loader import cache_dir

    return cache_dir() / "quality"


@dataclass(frozen=True)
class Row:
    """One measurement: a pass list at a length."""

    passes: tuple[str, ...]
    length: int
    ppl: float | None = None
    ppl_protocol: str = "first-window"
    passkey: float | None = None
    passkey_trials: int = 0  # prompts scored (depths x seeded trials)
    device: str = ""
    dtype: str = "fp32"
    date: str = ""
    lcc_version: str = ""
    source: str = ""  # the command or measurement file it came from

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passes"] = list(self.passes)
        return d


@dataclass(frozen=True)
class Estimate:
    """Quality of a pass list at a target length, with where the figures came from."""

    ppl: float | None
    passkey: float | None
    ppl_ratio: float | None  # ppl / baseline ppl (higher is worse)
    retrieval_ratio: float | None  # passkey / baseline passkey
    length: int | None  # the measured length used (None for a prior)
    extrapolated: bool
    source: str  # "record", "prior" or "exact"
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def quality_key(passes, length: int) -> tuple[str, ...]:
    """The passes that can change outputs at ``length``, in order, in canonical spelling."""
    from lcc.passes import parse_pass

    specs = [parse_pass(p) if isinstance(p, str) else p for p in passes]
    return tuple(str(s) for s in specs if not s.exact_for(length))


@dataclass
class Records:
    """A model's quality records (shipped and the user's, merged)."""

    model: str
    weights_hash: str
    trained_len: int
    rows: list[Row] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def baseline(self, protocol: str = "first-window") -> Row | None:
        """The unmodified model at its trained length (the figure every ratio divides by)."""
        for row in self.rows:
            if not quality_key(row.passes, row.length) and row.length == self.trained_len and \
                    row.ppl_protocol == protocol:
                return row
        return None

    def estimate(self, passes, length: int) -> Estimate | None:
        """The measured figures for ``passes`` at ``length`` (next longer length, or extrapolated)."""
        key = quality_key(passes, length)
        rows = [r for r in self.rows if quality_key(r.passes, r.length) == key]
        if not rows:
            return None
        longer = sorted((r for r in rows if r.length >= length), key=lambda r: r.length)
        extrapolated = not longer
        measured = longer[0].length if longer else max(r.length for r in rows)
        # one cell may be several rows (a row per perplexity protocol, the passkey on one of them): the perplexity
        # of the first-window protocol where there is one (the protocol every record has, so ratios compare
        # across candidates), the passkey of the row at that length with the most prompts
        at = [r for r in rows if r.length == measured]
        row = next((r for r in at if r.ppl_protocol == PPL_PROTOCOLS[0] and r.ppl is not None),
                   next((r for r in at if r.ppl is not None), at[0]))
        keyed = max((r for r in at if r.passkey is not None), key=lambda r: r.passkey_trials, default=None)
        base = self.baseline(row.ppl_protocol)
        ppl_ratio = row.ppl / base.ppl if row.ppl is not None and base and base.ppl else None
        key_base = next((b for b in map(self.baseline, PPL_PROTOCOLS) if b and b.passkey), None)
        passkey = keyed.passkey if keyed is not None else None
        retrieval = passkey / key_base.passkey if passkey is not None and key_base and key_base.passkey else None
        where = f"{row.device or 'unknown device'}, {row.dtype}, {row.date}"
        detail = (f"measured at {row.length} tokens ({where}; {row.source})" if not extrapolated else
                  f"extrapolated from the longest measurement, {row.length} tokens ({where}; {row.source})")
        return Estimate(row.ppl, passkey, ppl_ratio, retrieval, row.length, extrapolated, "record", detail)

    def merge(self, rows: list[Row]) -> None:
        """Add ``rows``; a row for the same quality-relevant passes (canonical spelling: ``factor=4`` and
        ``factor=4.0`` are one), length and protocol replaces the old one."""
        def key(r: Row):
            return quality_key(r.passes, r.length), r.length, r.ppl_protocol

        index = {key(r): i for i, r in enumerate(self.rows)}
        for row in rows:
            k = key(row)
            if k in index:
                self.rows[index[k]] = row
            else:
                index[k] = len(self.rows)
                self.rows.append(row)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model": self.model, "weights_hash": self.weights_hash,
                "trained_len": self.trained_len, "rows": [r.to_dict() for r in self.rows]}

    def write(self, path: Path) -> None:
        """Atomically (a temporary file renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        tmp.replace(path)


def _number(value, name: str, where: str, low: float, high: float = math.inf):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UsageError(f"{where}: {name}={value!r} is not a number in [{low:g}, {high:g}]; delete the file or "
                         "re-measure with `lcc quality`")
    return float(value)


def _row(d, where: str) -> Row:
    from lcc.passes import parse_pass

    if not isinstance(d, dict) or not isinstance(d.get("passes"), list) or not isinstance(d.get("length"), int):
        raise UsageError(f"{where}: a row without a pass list and an integer length; delete the file or "
                         "re-measure with `lcc quality`")
    for p in d["passes"]:
        if not isinstance(p, str):
            raise UsageError(f"{where}: pass {p!r} is not a string")
        parse_pass(p)  # an unknown pass or parameter is a usage error naming it
    if d["length"] < 1:
        raise UsageError(f"{where}: length {d['length']} is not positive")
    if d.get("ppl_protocol", "first-window") not in PPL_PROTOCOLS:
        raise UsageError(f"{where}: ppl_protocol {d.get('ppl_protocol')!r} is not one of {', '.join(PPL_PROTOCOLS)}")
    known = set(Row.__dataclass_fields__)
    extra = set(d) - known
    if extra:
        raise UsageError(f"{where}: unknown row fields {', '.join(sorted(extra))}")
    return Row(**{**d, "passes": tuple(d["passes"]), "ppl": _number(d.get("ppl"), "ppl", where, 1.0),
                  "passkey": _number(d.get("passkey"), "passkey", where, 0.0, 1.0)})


def read_file(path: Path, weights_hash: str | None = None) -> Records:
    """One records file, checked: corrupt, foreign or malformed files are a usage error, never used."""
    where = str(path)
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"quality records {where} are not readable JSON ({e.__class__.__name__}); delete the file "
                         "or re-measure with `lcc quality`")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"quality records {where}: format {doc.get('format') if isinstance(doc, dict) else None!r} "
                         f"is not {FORMAT}; delete the file or re-measure with `lcc quality`")
    if weights_hash is not None and doc.get("weights_hash") != weights_hash:
        raise UsageError(f"quality records {where} are for weights {doc.get('weights_hash')!r}, not this model's "
                         f"{weights_hash!r}; delete the file or re-measure with `lcc quality`")
    trained = doc.get("trained_len")
    if not isinstance(trained, int) or trained < 1 or not isinstance(doc.get("rows"), list):
        raise UsageError(f"quality records {where}: trained_len and rows are required; delete the file or re-measure")
    return Records(str(doc.get("model", "")), str(doc.get("weights_hash", "")), trained,
                   [_row(r, where) for r in doc["rows"]], [where])


def load(weights_hash: str, model: str = "", trained_len: int = 0, user: Path | None = None) -> Records | None:
    """Shipped and user records of these weights, merged (user rows win); None when there are none."""
    found = None
    for directory in (SHIPPED, user or user_dir()):
        path = Path(directory) / f"{weights_hash}.json"
        if path.is_file():
            rec = read_file(path, weights_hash)
            if found is None:
                found = rec
            else:
                found.merge(rec.rows)
                found.files += rec.files
    if found is not None and trained_len and found.trained_len != trained_len:
        raise UsageError(f"quality records {found.files[-1]} say trained length {found.trained_len}, the model says "
                         f"{trained_len}; delete the file or re-measure with `lcc quality`")
    return found


def shipped() -> list[Records]:
    """The records that ship with lcc (this project's measurements; the first is the prior's reference)."""
    return [read_file(p) for p in sorted(SHIPPED.glob("*.json"))]
