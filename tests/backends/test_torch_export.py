"""The torch artifact is data, never code: a planted pickle, graph target, shape expression or guard never runs.

Each crafted artifact carries a payload that would write a marker file if anything executed it;
loading must refuse it with one line (a usage error, exit 2 from the command line) and the
marker must not appear. Before the format change, the first case ran its payload and exited 0.
"""

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch

from lcc.backends.torch_export import BACKEND, load_weights
from lcc.compile import compile_model
from lcc.errors import UsageError
from tests.test_cli import lcc


class Payload:
    """Unpickling this writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def pickled(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(Payload(marker))


@pytest.fixture(scope="module")
def artifact(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch-artifact") / "a"
    compile_model(tiny("llama"), 64, "torch", [], out)
    return out


def copy_of(artifact: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "crafted"
    shutil.copytree(artifact, dst)
    return dst


def test_the_artifact_holds_no_pickle_and_the_weights_once(artifact, tiny):
    names = sorted(p.name for p in artifact.iterdir())
    assert not [n for n in names if n.endswith((".pt", ".pt2", ".pkl", ".bin"))], names
    assert {"prefill.json", "decode.json", "prefill_logits.json"} <= set(names)  # three entries, one weights file
    weight_bytes = sum(p.numel() * p.element_size() for p in tiny("llama").model.parameters())  # tied: counted once
    stored = (artifact / "weights.safetensors").stat().st_size
    assert stored <= 1.1 * weight_bytes, (stored, weight_bytes)


def test_a_pickle_planted_as_an_old_pt2_archive_never_runs(artifact, tmp_path):
    """Finding 1: ``data/sample_inputs/model.pt`` replaced by a pickle ran during ``lcc run``."""
    crafted, marker = copy_of(artifact, tmp_path), tmp_path / "marker"

    class Plus(torch.nn.Module):
        def forward(self, x):
            return x + 1

    plain = io.BytesIO()
    torch.export.save(torch.export.export(Plus(), (torch.ones(2),)), plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(crafted / "prefill.pt2", "w") as dst:
        for name in src.namelist():
            data = pickled(marker) if name.endswith("sample_inputs/model.pt") else src.read(name)
            dst.writestr(name, data)
    (crafted / "prefill.json").unlink()
    r = lcc("run", str(crafted), "--prompt", "hello", "--max-new-tokens", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "prefill" in r.stderr  # the checksums name the unlisted prefill.pt2 / the missing prefill.json
    with pytest.raises(UsageError, match="prefill.json"):  # and the loader itself never opens a .pt2
        BACKEND.load(crafted, {})
    assert not marker.exists()


def test_a_pickle_in_place_of_the_weights_never_runs(artifact, tmp_path):
    crafted, marker = copy_of(artifact, tmp_path), tmp_path / "marker"
    (crafted / "weights.safetensors").write_bytes(pickled(marker))
    with pytest.raises(UsageError, match="not a readable safetensors"):
        load_weights(crafted / "weights.safetensors")
    assert not marker.exists()


def _edit_graph(crafted: Path, edit) -> None:
    path = crafted / "prefill.json"
    tree = json.loads(path.read_bytes())
    edit(tree)
    path.write_text(json.dumps(tree))


def _first_node(tree):
    return tree["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize("case,fragment", [
    ("target", "node target 'torch.os.system'"),
    ("expr", "shape expression"),
    ("range", "shape expression"),
    ("guards", "guard code"),
    ("nested target", "node target 'torch.os.system'"),  # a node wherever it sits in the tree
    ("expr in a list", "shape expression"),
])
def test_code_in_the_graph_json_is_refused_before_torch_reads_it(artifact, tmp_path, case, fragment):
    crafted, marker = copy_of(artifact, tmp_path), tmp_path / "marker"
    code = f"__import__('os').system('touch {marker}')"

    def edit(tree):
        if case == "target":
            _first_node(tree)["target"] = "torch.os.system"
        elif case == "expr":
            text = (crafted / "prefill.json").read_text()
            sym = re.search(r'"expr_str": "([^"]+)"', text)
            assert sym, "the prefill graph has a symbolic length"
            tree_text = json.dumps(tree).replace(json.dumps(sym.group(1)), json.dumps(code), 1)
            tree.clear()
            tree.update(json.loads(tree_text))
        elif case == "range":
            tree["range_constraints"] = {code: {"min_val": 2, "max_val": 64}}
        elif case == "nested target":
            tree["graph_module"]["graph"]["nodes"][-1]["metadata"] = {"x": [[{"target": "torch.os.system",
                                                                              "inputs": []}]]}
        elif case == "expr in a list":
            tree["graph_module"]["graph"]["nodes"][-1]["metadata"] = {"expr_str": ["s0", [code]]}
        else:
            tree["guards_code"] = [code]

    _edit_graph(crafted, edit)
    with pytest.raises(UsageError, match=re.escape(fragment)):
        BACKEND.load(crafted, {})
    assert not marker.exists()


def test_no_lcc_module_unpickles_or_calls_torch_export_load():
    """The loaders that can run code are not used anywhere in lcc."""
    root = Path(__file__).resolve().parents[2] / "lcc"
    offenders = []
    for path in root.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bpickle\.loads?\(|torch\.export\.load\(|_pickle_load", code) or (
                    "torch.load(" in code and "weights_only=True" not in code):
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert offenders == []


def test_the_graph_reader_runs_as_torchs_deserializer_builds_it(artifact):
    """The oracle is torch's own ``deserialize(...).module()`` of the same JSON and weights."""
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    from lcc.capture.program import CacheLayout
    from lcc.artifact import load

    loaded = BACKEND.load(artifact)
    tensors = load_weights(artifact / "weights.safetensors")
    layout = CacheLayout.from_dict(load(artifact).cache)
    gen = torch.Generator().manual_seed(1)
    for name in ("prefill", "prefill_logits", "decode"):
        prefix = f"{name}::"
        constants = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        want_gm = deserialize(SerializedArtifact((artifact / f"{name}.json").read_bytes(), tensors, constants,
                                                 b"")).module()
        calls = [(torch.randint(0, 256, (1, 1), generator=gen), torch.tensor(5))] if name == "decode" else \
            [(torch.randint(0, 256, (1, s), generator=gen),) for s in (3, 17)]  # the dynamic length, twice
        for args in calls:
            cache = [torch.randn(t.shape, generator=gen) for t in layout.empty()]
            with torch.inference_mode():
                want = want_gm(*args, *[t.clone() for t in cache])
                got = loaded.entries[name](*args, *cache)
            assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want)), name


def test_the_readers_enum_tables_agree_with_torchs():
    from torch._export.serde.serialize import (_SERIALIZE_TO_TORCH_DTYPE, _SERIALIZE_TO_TORCH_LAYOUT,
                                               _SERIALIZE_TO_TORCH_MEMORY_FORMAT)

    from lcc.backends.torch_export import serialized_enums

    enums = serialized_enums()
    for kind, torchs in (("as_scalar_type", _SERIALIZE_TO_TORCH_DTYPE), ("as_layout", _SERIALIZE_TO_TORCH_LAYOUT),
                         ("as_memory_format", _SERIALIZE_TO_TORCH_MEMORY_FORMAT)):
        assert enums[kind] and all(torchs[key] == value for key, value in enums[kind].items()), kind
    dtypes = set(enums["as_scalar_type"].values())
    assert {torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool, torch.int8,
            torch.uint8} <= dtypes


def test_an_argument_kind_the_reader_does_not_know_is_one_line(artifact, tmp_path):
    crafted = copy_of(artifact, tmp_path)
    _edit_graph(crafted, lambda tree: _first_node(tree)["inputs"][0].update(arg={"as_graph": {"name": "g"}}))
    with pytest.raises(UsageError, match="does not load as an exported program.*recompile"):
        BACKEND.load(crafted, {})
