import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the compile cache stays off in tests (tests/test_compile_cache.py turns it on in its own directory): a hit from
# an earlier run would answer a test that means to compile
os.environ.setdefault("LCC_COMPILE_CACHE_MAX", "0")
# Under pytest-xdist (the README's test command runs one worker per core) each worker and the processes its tests
# start use one intra-op thread: two workers of two threads each on two cores would time-slice every matmul.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without a GPU, Triton kernels run in its interpreter; the mode is read when triton is first
# imported (torch.export imports it), so it is set here, before any test module loads.
import torch  # noqa: E402  (importing torch does not import triton)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
warnings.filterwarnings("ignore")

TINY_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gpt-neox"]


@pytest.fixture(scope="session")
def smollm2():
    from lcc.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny():
    from lcc.models import load_model

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(f"tiny-{family}")
        return cache[family]

    return get
