"""The backend protocol: every backend lowers and loads the same way, and a new lowering or backend is one registration."""

import inspect

import pytest
import torch

import lcc.backends
from lcc.backends import Lowered, get_backend, names, register_backend
from lcc.graph import ATTENTION, lcc_nodes, set_args
from lcc.ops import registry

TOY_HOW = "toy: the reference of lcc.rope, traced by the exporter"


def _backend_object(name):
    try:
        return get_backend(name)
    except ValueError as e:  # a UsageError: not installed / cannot run here
        pytest.skip(str(e))


@pytest.mark.parametrize("name", ["torch", "onnx", "tvm", "triton", "hf"])
def test_every_backend_implements_the_protocol(name):
    backend = _backend_object(name)
    lower = inspect.signature(backend.lower).parameters
    assert list(lower)[:2] == ["program", "out_dir"]
    for keyword, default in (("target", None), ("dtype", "float32"), ("entries", None), ("progress", None)):
        assert lower[keyword].kind is inspect.Parameter.KEYWORD_ONLY and lower[keyword].default == default
    load = inspect.signature(backend.load).parameters
    assert list(load) == ["out_dir", "manifest"] and load["manifest"].default is None
    assert backend.name == name and backend.available() is None


def test_register_lowering_refuses_anything_but_a_lowering_record():
    with pytest.raises(TypeError, match="registry.Lowering"):
        registry.register_lowering("rope", "onnx", lambda *a: None)


def _toy_rope_lowering():
    """A prepare-only onnx lowering: point the node at the op's reference, which the exporter decomposes."""
    reference = registry.reference_call(registry.get("rope"))

    def prepare(node, args, capacity):
        node.target, node.args, node.kwargs = reference, tuple(args.values()), {}
        return TOY_HOW

    return registry.Lowering(emit=None, how=TOY_HOW, prepare=prepare)


def test_a_toy_lowering_registered_here_is_recorded_native_and_runs_under_diff(tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from lcc.capture import capture
    from lcc.diff import diff
    from lcc.passes import canonicalize

    backend = _backend_object("onnx")
    monkeypatch.setitem(registry.get("rope").lowerings, "onnx", _toy_rope_lowering())
    loaded = tiny("llama")
    program = canonicalize(capture(loaded, capacity=32, entries=("prefill_full",)))
    for node in lcc_nodes(program.entries["prefill_full"], ATTENTION):  # sinks: no fused GroupQueryAttention block
        set_args(node, mask="sliding:window=8,sinks=2")
    program.entries["prefill_full"].recompile()
    lowered = backend.lower(program, tmp_path / "a", entries=("prefill_full",))
    assert lowered.native["rope"] == TOY_HOW and "rope" not in lowered.fallbacks, lowered.native
    ids = torch.randint(3, loaded.spec.vocab, (1, 12), generator=torch.Generator().manual_seed(0))
    want = program.entries["prefill_full"](ids, *program.cache.empty())
    got = backend.load(tmp_path / "a").entries["prefill_full"](ids, *program.cache.empty())
    torch.testing.assert_close(torch.as_tensor(got[0]), want[0], atol=1e-4, rtol=1e-4)  # logits, fp32 rule
    stage = diff(loaded, ["sliding-window:window=8,sinks=2"], length=24, backend="onnx")[-1]
    assert stage.name == "lowered:onnx" and stage.ok and stage.vs_prev_max_abs <= stage.limit


class ToyBackend:
    """Lowers by ``torch.export`` to ``<entry>.pt2`` and loads those back (a toy: pickle-based, test-only)."""

    name = "toy"

    def available(self):
        return None

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        from pathlib import Path

        from lcc.backends.torch_export import export_entry

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        entries = tuple(entries or ("prefill", "decode"))
        for entry in entries:
            torch.export.save(export_entry(program, entry), out / f"{entry}.pt2")
        return Lowered([f"{e}.pt2" for e in entries], native={"attention": "torch.export", "rope": "torch.export"})

    def load(self, out_dir, manifest=None):
        from pathlib import Path
        from types import SimpleNamespace

        import lcc.ops  # noqa: F401  (the programs call torch.ops.lcc.*)

        files = sorted(Path(out_dir).glob("*.pt2"))
        return SimpleNamespace(entries={f.stem: torch.export.load(f).module() for f in files})


def test_a_toy_backend_registered_here_runs_under_diff(tiny, monkeypatch):
    from lcc.diff import diff

    monkeypatch.setattr(lcc.backends, "_BACKENDS", dict(lcc.backends._BACKENDS))
    register_backend("toy", ToyBackend())
    assert "toy" in names() and get_backend("toy").name == "toy"
    reports = diff(tiny("llama"), [], length=24, backend="toy")
    stage, before = reports[-1], reports[-2]
    assert stage.name == "lowered:toy" and stage.ok
    # torch.export of the same graph runs the same arithmetic: the stage equals the one before it
    assert stage.vs_prev_max_abs <= stage.limit and abs(stage.max_abs - before.max_abs) <= stage.limit


def test_register_backend_takes_a_module_path(monkeypatch):
    monkeypatch.setattr(lcc.backends, "_BACKENDS", dict(lcc.backends._BACKENDS))
    register_backend("torch-again", "lcc.backends.torch_export")
    assert get_backend("torch-again") is get_backend("torch")
