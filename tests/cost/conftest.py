import pytest


@pytest.fixture(scope="session")
def tiny_program():
    """Canonical tiny-llama program with prefill and decode, captured once (capacity is symbolic in costs)."""
    from lcc.capture import capture
    from lcc.models import load_model
    from lcc.passes import canonicalize

    loaded = load_model("tiny-llama")
    return loaded, canonicalize(capture(loaded, 128, entries=("prefill", "decode")))


def pytest_configure(config):
    config.addinivalue_line("markers", "real_capture: the CLI test captures the model itself")
