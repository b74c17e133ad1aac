"""The triton artifact: AOTInductor packages holding code only, every entry's weights once in safetensors,
loaded by torch's C++ package loader with nothing unpickled.

AOTInductor compiles C++ for the CPU here (minutes per entry on a shared 2-core machine), so every test
that lowers is slow and they share one lowered tiny-llama.
"""

import io
import json
import zipfile

import pytest
import torch

from lcc.backends.torch_export import load_weights
from lcc.backends.triton.compile import BACKEND, WEIGHTS
from lcc.diff import logit_limit
from lcc.errors import UsageError

ENTRIES = ("prefill", "decode", "prefill_logits")  # what `lcc compile` lowers


@pytest.fixture(scope="module")
def lowered(compiled_tiny_llama):
    """(loaded, the program it was lowered from, artifact dir, its backend files): the session's compiled tiny-llama
    (tests/backends/triton/conftest.py), shared with the end-to-end test of test_backend.py."""
    from lcc.capture import capture
    from lcc.passes import canonicalize

    loaded, result = compiled_tiny_llama
    program = canonicalize(capture(loaded, capacity=64, entries=ENTRIES))
    return loaded, program, result.out, result.manifest["files"]


@pytest.mark.slow
def test_the_weights_are_stored_once_and_the_packages_hold_none(lowered):
    loaded, _, out, files = lowered
    assert sorted(files) == ["decode.pt2", "prefill.pt2", "prefill_logits.pt2", "triton.json", WEIGHTS]
    assert json.loads((out / "triton.json").read_text())["target"] == "cpu"
    stored = load_weights(out / WEIGHTS)
    hf = dict(loaded.model.named_parameters())
    assert {name.removeprefix("model.") for name in stored} == set(hf)  # the program holds the HF module as `model`
    for name, t in stored.items():
        assert torch.equal(t, hf[name.removeprefix("model.")]), name
    for entry in ENTRIES:
        data = (out / f"{entry}.pt2").read_bytes()
        with zipfile.ZipFile(out / f"{entry}.pt2") as z:  # stored uncompressed, so weight bytes would show
            assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        for name in ("lm_head.weight", "model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"):
            assert hf[name].detach().numpy().tobytes() not in data, (entry, name)


@pytest.mark.slow
def test_the_loaded_entries_compute_what_the_program_computes(lowered):
    _, program, out, _ = lowered
    loaded = BACKEND.load(out)
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = program.entries["prefill"](ids, *program.cache.empty())
        got = loaded.entries["prefill"](ids, *program.cache.empty())
        assert (got[0] - want[0]).abs().max() <= logit_limit(want[0])
        step = (torch.tensor([[7]]), torch.tensor(20))
        want = program.entries["decode"](*step, *want[1:])
        got = loaded.entries["decode"](*step, *got[1:])
    assert (got[0] - want[0]).abs().max() <= logit_limit(want[0])
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


class Payload:
    """Unpickling this writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def plant_exported_program(package, marker) -> None:
    """Add to ``package`` an exported program whose sample inputs are a pickle that writes ``marker``."""
    import pickle

    class Plus(torch.nn.Module):
        def forward(self, x):
            return x + 1

    plain = io.BytesIO()
    torch.export.save(torch.export.export(Plus(), (torch.ones(2),)), plain)
    with zipfile.ZipFile(package) as z:
        prefix = z.namelist()[0].split("/")[0]
        members = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(plain) as src:
        for name in src.namelist():
            inner = name.split("/", 1)[1]
            if inner.startswith(("models/", "data/sample_inputs/", "data/weights/", "data/constants/")):
                planted = pickle.dumps(Payload(marker)) if inner.startswith("data/sample_inputs/") else src.read(name)
                members[f"{prefix}/{inner}"] = planted
    with zipfile.ZipFile(package, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.slow
def test_a_pickle_planted_in_a_package_never_runs(lowered, tmp_path):
    """torch's ``aoti_load_package`` deserialises any exported program an archive holds (its sample inputs
    through ``torch.load(weights_only=False)``); the backend's loader reads only what the C++ loader needs."""
    import shutil

    from torch._inductor import aoti_load_package

    _, _, out, _ = lowered
    crafted = tmp_path / "crafted"
    shutil.copytree(out, crafted)
    plant_exported_program(crafted / "decode.pt2", tmp_path / "marker")
    BACKEND.load(crafted)
    assert not (tmp_path / "marker").exists()
    try:  # the control: torch's Python loader does run it
        aoti_load_package(str(crafted / "decode.pt2"))
    except Exception:  # noqa: BLE001  (whether it then fails on the planted program does not matter)
        pass
    assert (tmp_path / "marker").read_text() == "ran"


@pytest.mark.slow
def test_a_weights_file_that_does_not_match_the_packages_is_refused(lowered, tmp_path):
    """The packages read their constants through raw pointers: a wrong shape would read past a tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, _, out, _ = lowered
    crafted = tmp_path / "crafted"
    shutil.copytree(out, crafted)
    tensors = load_file(str(crafted / WEIGHTS))
    tensors["model.lm_head.weight"] = tensors["model.lm_head.weight"][:10].contiguous()
    save_file(tensors, str(crafted / WEIGHTS))
    with pytest.raises(UsageError, match=r"model\.lm_head\.weight should be float32 \[260, 64\], found"):
        BACKEND.load(crafted)
    meta = json.loads((crafted / "triton.json").read_text())
    del meta["weights"]
    (crafted / "triton.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="another lcc version"):
        BACKEND.load(crafted)


def test_native_files_are_the_packages_and_not_the_weights(tmp_path):
    meta = {"entries": {"prefill": "prefill.pt2", "decode": "decode.pt2"}, "weights": WEIGHTS, "constants": {}}
    (tmp_path / "triton.json").write_text(json.dumps(meta))
    assert sorted(BACKEND.native_files(tmp_path)) == ["decode.pt2", "prefill.pt2"]


def test_half_precision_is_declared_and_a_program_in_another_dtype_is_refused(tiny):
    from lcc.backends import check_dtype
    from lcc.capture import capture
    from lcc.passes import canonicalize

    for dtype in ("float32", "float16", "bfloat16"):
        check_dtype(BACKEND, dtype)
    program = canonicalize(capture(tiny("llama"), capacity=16, entries=("decode",)))
    with pytest.raises(RuntimeError, match="whose weights are float32: load the model in float16"):
        BACKEND.lower(program, "/nonexistent/never-written", target="cpu", dtype="float16", entries=("decode",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: a cuda target compiles")
def test_a_cuda_target_without_a_gpu_is_one_line(tmp_path):
    with pytest.raises(UsageError, match=r"^--target cuda:sm_90 with --backend triton: .* none; .*--target cpu") as e:
        BACKEND.lower(None, tmp_path / "a", target="cuda:sm_90")  # refused before the program is read
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_target_for_another_arch_than_this_gpus_is_one_line(tmp_path):
    major, minor = torch.cuda.get_device_capability(0)
    other = "sm_80" if (major, minor) != (8, 0) else "sm_90"
    with pytest.raises(UsageError, match=f"^--target cuda:{other} with --backend triton: AOTInductor compiles for "
                                         f"this GPU \\(sm_{major}{minor}\\)") as e:
        BACKEND.lower(None, tmp_path / "a", target=f"cuda:{other}")
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_decode_package_computes_what_the_program_computes(dtype, tmp_path):
    """Inductor's C++ takes fp16 and bf16 (the Triton kernels are compiled for both in test_aot.py).  The bound:
    four roundings of the largest logit in that dtype (the program itself rounds each layer's output)."""
    from lcc.capture import capture
    from lcc.models import load_model
    from lcc.passes import canonicalize

    program = canonicalize(capture(load_model("tiny-llama", dtype=dtype), capacity=64, entries=("decode",)))
    result = BACKEND.lower(program, tmp_path / "a", target="cpu", dtype=dtype, entries=("decode",))
    assert "weights stored once" in result.notes[0] and dtype in result.notes[0]
    assert {t.dtype for t in load_weights(tmp_path / "a" / WEIGHTS).values()} == {getattr(torch, dtype)}
    g = torch.Generator().manual_seed(3)
    cache = [torch.randn(s, generator=g).to(getattr(torch, dtype)) for s in program.cache.shapes()]
    step = (torch.tensor([[7]]), torch.tensor(20))
    with torch.no_grad():
        want = program.entries["decode"](*step, *cache)
        got = BACKEND.load(tmp_path / "a").entries["decode"](*step, *[c.clone() for c in cache])
    assert got[0].dtype == getattr(torch, dtype)
    eps = torch.finfo(getattr(torch, dtype)).eps
    assert float((got[0].float() - want[0].float()).abs().max()) <= 4 * eps * float(want[0].float().abs().max())
