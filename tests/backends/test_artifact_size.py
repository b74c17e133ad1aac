"""Every backend's artifact holds the weights once and nothing else of size: its files (the backend's own,
``Lowered.files``: not the tokenizer, lcc.json or the report) <= 1.1 x the weight bytes in the artifact's dtype.

The oracle for the weight bytes is the HF module: numel x itemsize over its unique parameters (a tied
embedding counted once; ``inv_freq`` buffers are derived, not weights).  Compiled code and graphs have a
size of their own that does not grow with the weights (an AOTInductor ``.so`` is ~1.7 MB for any model
size), so at test size the bound is 1.1 x weights + a stated allowance per backend, on a tiny llama with a
32k vocabulary: its 17 MB of weights outweigh each allowance, so a second copy of them fails the test.
The true ratio is checked on the real smollm2 artifact in the slow test at the end.
"""

from pathlib import Path

import pytest
import torch

from lcc.compile import compile_model

MB = 1 << 20
# Fixed bytes beside the weights at test size: graphs / code of the three entries (prefill, decode,
# prefill_logits), measured at 2 layers and rounded up.  None of them grows with the weight bytes.
ALLOWANCE = {
    "torch": 2 * MB,  # three graph JSONs (0.31-0.32 MB each at 2 layers)
    "onnx": 1 * MB,  # three .onnx graphs, onnxruntime-genai's model.onnx and two JSONs: 48 kB in all
    "tvm": 3 * MB,  # one Relax VM library (.so, 1.16 MB) for all entries
    "triton": 8 * MB,  # one AOTInductor package per entry: its wrapper .so (~1.7 MB) and generated C++ sources
}


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() yields a tied one once


def backend_bytes(out: Path, manifest) -> int:
    return sum((out / f).stat().st_size for f in manifest["files"])


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """tiny-llama's shape with a 32768-token vocabulary, as an HF directory loaded by ``lcc.models``."""
    from transformers import AutoModelForCausalLM

    from lcc.models import load_model
    from lcc.models.tiny import byte_tokenizer, tiny_config

    config = tiny_config("llama")
    config.vocab_size = 32768
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = tmp_path_factory.mktemp("wide-llama")
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return load_model(path)


def available(backend: str) -> str | None:
    from lcc.backends import get_backend
    from lcc.errors import UsageError

    try:
        get_backend(backend)
    except UsageError as e:
        return str(e)
    return None


@pytest.mark.parametrize("backend", [
    "torch", "onnx", "tvm",
    pytest.param("triton", marks=pytest.mark.slow),  # AOTInductor compiles C++: minutes for three entries
])
def test_the_artifact_holds_the_weights_once(wide_llama, backend, tmp_path):
    why = available(backend)
    if why:
        pytest.skip(why)
    weights = weight_bytes(wide_llama.model)
    assert weights > 2 * ALLOWANCE[backend]  # a second copy of the weights could not hide in the allowance
    result = compile_model(wide_llama, 64, backend, [], tmp_path / "a", target="cpu")
    size = backend_bytes(tmp_path / "a", result.manifest)
    assert size <= 1.1 * weights + ALLOWANCE[backend], (backend, size, weights)


@pytest.mark.slow
def test_the_real_torch_artifact_is_within_a_tenth_of_its_weights(smollm2, tmp_path):
    """smollm2-135m at 32k (the quickstart's length): the true ratio, with no allowance."""
    result = compile_model(smollm2, 32768, "torch", [], tmp_path / "a", target="cpu")
    size, weights = backend_bytes(tmp_path / "a", result.manifest), weight_bytes(smollm2.model)
    assert size <= 1.1 * weights, (size, weights)
