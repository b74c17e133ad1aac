import pytest


@pytest.fixture(scope="session")
def lowered(tiny, tmp_path_factory):
    """``get(family)`` -> (canonical program, TvmProgram) of the tiny model, built for llvm once per session."""
    from lcc.backends.tvm import TvmProgram, lower
    from lcc.capture.export import capture
    from lcc.passes import canonicalize

    cache = {}

    def get(family):
        if family not in cache:
            program = canonicalize(capture(tiny(family), capacity=64))
            out = tmp_path_factory.mktemp(f"tvm-{family}")
            lower(program, out, target="llvm")
            cache[family] = program, TvmProgram(out)
        return cache[family]

    return get
