"""``lcc.integrity``: an artifact is verified before anything of it is loaded; native code runs only when trusted."""

import json
import os
import shutil

import pytest

from lcc.cli import main
from lcc.compile import compile_model, load_artifact
from lcc.errors import UsageError
from lcc.integrity import FILE, inside, write_checksums
from lcc.passes import parse_pass


@pytest.fixture(scope="module")
def torch_artifact(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("art") / "a"
    compile_model(tiny("llama"), 128, "torch", [parse_pass("flash")], out)
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_checksums_cover_every_file_but_themselves(torch_artifact):
    table = json.loads((torch_artifact / FILE).read_text())["files"]
    on_disk = {p.name for p in torch_artifact.iterdir()} - {FILE}
    assert set(table) == on_disk and "lcc.json" in table and "weights.safetensors" in table
    load_artifact(torch_artifact)  # an intact artifact loads


def _zero(d):
    p = d / "weights.safetensors"
    p.write_bytes(bytes(p.stat().st_size))


def _truncate(d):
    p = d / "weights.safetensors"
    p.write_bytes(p.read_bytes()[:100])


def _swap(d):
    shutil.copy(d / "prefill.json", d / "decode.json")


def _missing_graph(d):
    (d / "prefill.json").unlink()


def _missing_checksums(d):
    (d / FILE).unlink()


def _extra(d):
    (d / "added_tokens.json").write_text("{}")


def _symlink(d):
    (d / "tokenizer.json").unlink()
    os.symlink("/etc/hostname", d / "tokenizer.json")


def _edited_model_id(d):
    m = json.loads((d / "lcc.json").read_text())
    m["model"]["id"] = m["model"]["id"].swapcase()  # same size: only the hash tells
    (d / "lcc.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("damage, name, fragment", [
    (_zero, "weights.safetensors", "does not match its SHA-256"),
    (_truncate, "weights.safetensors", "has 100 bytes"),
    (_swap, "decode.json", "recorded in checksums.json"),
    (_missing_graph, "prefill.json", "is missing"),
    (_missing_checksums, FILE, "is missing"),
    (_extra, "added_tokens.json", "is not listed in checksums.json"),
    (_symlink, "tokenizer.json", "symbolic link"),
    (_edited_model_id, "lcc.json", "does not match its SHA-256"),
])
def test_a_damaged_or_swapped_file_is_refused_by_run_naming_it(torch_artifact, tmp_path, capsys, damage, name,
                                                                fragment):
    art = _copy(torch_artifact, tmp_path)
    damage(art)
    assert main(["run", str(art), "--prompt", "hello", "--max-new-tokens", "2"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith(f"lcc: error: {art / name}") and fragment in lines[0], lines[0]


@pytest.mark.parametrize("rel, fragment", [
    ("/etc/passwd", "outside the artifact"),
    ("../x", "outside the artifact"),
    ("a/../../x", "outside the artifact"),
    ("", "not a plain relative path"),
    (5, "not a plain relative path"),
    ("out", "a link out of the artifact"),
])
def test_manifest_paths_stay_inside_the_artifact(tmp_path, rel, fragment):
    (tmp_path / "art").mkdir()
    os.symlink(tmp_path, tmp_path / "art" / "out")
    with pytest.raises(UsageError, match=fragment):
        inside(tmp_path / "art", rel, "tvm.json")
    assert inside(tmp_path / "art", "sub/lib.so", "tvm.json") == tmp_path / "art" / "sub" / "lib.so"


@pytest.fixture(scope="module")
def tvm_artifact(tmp_path_factory, tiny):
    pytest.importorskip("tvm")
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("tvm") / "t"
    old = os.environ.get("LCC_CACHE")
    os.environ["LCC_CACHE"] = str(cache)
    try:
        compile_model(tiny("llama"), 128, "tvm", [], out)
    finally:
        if old is None:
            del os.environ["LCC_CACHE"]
        else:
            os.environ["LCC_CACHE"] = old
    return out, cache


def test_native_code_runs_only_when_built_here_or_trusted(tvm_artifact, tmp_path, monkeypatch, capsys):
    out, cache = tvm_artifact
    monkeypatch.setenv("LCC_CACHE", str(cache))
    load_artifact(out)  # this machine built it: its library is in built.json
    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "elsewhere"))
    assert main(["run", str(out), "--prompt", "hello", "--max-new-tokens", "2"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and ".so is native code that was not compiled on this machine" in line
    assert "--trust-native" in line
    assert main(["run", str(out), "--prompt", "hello", "--max-new-tokens", "2", "--trust-native"]) == 0


@pytest.mark.parametrize("key, value", [("libraries", "/tmp/evil.so"), ("libraries", "../evil.so"),
                                        ("weights", "../../etc/weights.safetensors")])
def test_a_tvm_manifest_pointing_out_is_refused_even_when_trusted(tvm_artifact, tmp_path, key, value):
    art = _copy(tvm_artifact[0], tmp_path)
    m = json.loads((art / "tvm.json").read_text())
    m[key] = {k: value for k in m[key]} if isinstance(m[key], dict) else value
    (art / "tvm.json").write_text(json.dumps(m))
    write_checksums(art)  # someone rewrote the checksums too: confinement still holds
    with pytest.raises(UsageError, match="outside the artifact directory"):
        load_artifact(art, trust_native=True)
