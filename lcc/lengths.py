"""Context lengths as users quote them: ``128k`` = 131072, ``1m`` = 1048576, plain integers are tokens."""

import re

from lcc.errors import UsageError

_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
_RE = re.compile(r"^\s*(-?\d+)\s*([kKmM]?)\s*$")


def parse_length(text: str | int) -> int:
    """Parse a context length; anything but a positive integer with optional k/m suffix is a usage error."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise UsageError(f"length {text} must be positive: use e.g. 4096, 8k or 128k")
        return text
    m = _RE.match(str(text))
    if not m:
        raise UsageError(f"bad length {text!r}: use a positive integer of tokens or a k/m suffix, e.g. 4096, 8k, 128k, 1m")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise UsageError(f"length {text!r} must be positive: use e.g. 4096, 8k or 128k")
    return value


def parse_lengths(text: str) -> list[int]:
    """A comma-separated list of lengths: ``4k,8k,16k``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UsageError(f"bad length list {text!r}: use e.g. 4k,8k,16k")
    return [parse_length(p) for p in parts]


def format_length(n: int) -> str:
    """The short form: 131072 -> '128k'."""
    for suffix, unit in (("m", 1024 * 1024), ("k", 1024)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


MIN_TOKENS = 3  # a captured prefill's sequence length is dynamic in [2, capacity], and torch.export needs max > min


def check_min_length(n: int, flag: str, text: str | int | None = None) -> int:
    """``n`` when a program can be captured for it; a usage error below :data:`MIN_TOKENS`."""
    if n < MIN_TOKENS:
        raise UsageError(f"{flag} {text if text is not None else n}: lcc captures programs of at least "
                         f"{MIN_TOKENS} tokens; give a longer length")
    return n
