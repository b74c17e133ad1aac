"""Long real text for perplexity: the King James Bible from Debian's ``bible-kjv`` package, or a file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from lcc.errors import UsageError
from lcc.models.loader import cache_dir

_VERSE_REF = re.compile(r"^\S+\d+:\d+ ", re.MULTILINE)


def kjv_text() -> str:
    """The whole KJV text (4.4 MB), verse references stripped, cached under the lcc cache dir."""
    cached = cache_dir() / "text" / "kjv.txt"
    if cached.is_file():
        return cached.read_text()
    if shutil.which("bible") is None:
        raise UsageError("no long text found: install Debian's bible-kjv (apt-get install bible-kjv) "
                         "or pass --text FILE")
    raw = subprocess.run(["bible", "-f", "Genesis1:1-Revelation22:21"], capture_output=True, text=True,
                         check=True, stdin=subprocess.DEVNULL).stdout
    text = _VERSE_REF.sub("", raw)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(cached)
    return text


def load_text(path: str | None) -> str:
    if path is None:
        return kjv_text()
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--text {path}: no such file; give a UTF-8 text file")
    return p.read_text(errors="replace")
