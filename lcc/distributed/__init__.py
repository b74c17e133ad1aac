"""Running programs past one device: the launcher of context-parallel ranks (torch.distributed)."""

CP_PASS = "context-parallel"


def is_context_parallel(passes) -> bool:
    """Whether ``passes`` (specs or their strings) hold the context-parallel pass, read from the names alone: the
    run path asks this without importing :mod:`lcc.passes` or the launcher."""
    return any(str(p).split(":", 1)[0] == CP_PASS for p in passes or ())
