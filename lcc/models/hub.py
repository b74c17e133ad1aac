"""Hub ids (``owner/name``) resolved from the local Hugging Face cache, never the network.

``HF_HUB_CACHE``, else ``HF_HOME``/hub, else huggingface_hub's default is where a snapshot is
looked for (read at each call, so a changed environment is honoured); huggingface_hub's
``snapshot_download(local_files_only=True)`` finds the revision ``refs/main`` names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lcc.errors import UsageError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """``owner/name``, as the hub spells repository ids (the caller has checked it is not a path)."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def snapshot_path(repo_id: str) -> Path:
    """The local snapshot directory of ``repo_id``; a UsageError saying where it looked when it is absent."""
    from huggingface_hub import snapshot_download

    cache = hub_cache()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError is an OSError; a bad id a ValueError
        raise UsageError(f"{repo_id!r} is neither an existing path nor a hub id in the local Hugging Face cache "
                         f"({cache}): lcc never downloads; fetch it with `huggingface-cli download {repo_id}` "
                         "(or point HF_HUB_CACHE at the cache holding it)") from None
