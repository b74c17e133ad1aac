"""``lcc.artifact``: the manifest round trip, its refusals (one line, exit 2), and signatures from the real cache."""

import json
import subprocess
import sys

import pytest

import lcc
from lcc import artifact
from lcc.artifact import FORMAT, Manifest, entry_signatures
from lcc.errors import UsageError


def sample_manifest(**changes) -> Manifest:
    fields = dict(model={"id": "tiny-llama", "weights_hash": "ab12", "spec": {"layers": 2}}, target_len=256,
                  backend="torch", plan={"source": "user", "passes": ["flash:layers=all"], "reason": "given",
                                         "device": "cpu"},
                  cache={"batch": 1, "capacity": 256, "layers": 2, "kv_heads": 2, "head_dim": 8, "dtype": "float32",
                         "kind": "plain", "tensors": []},
                  entries={"prefill": {"inputs": [], "outputs": []}}, files=["decode.json", "prefill.json"],
                  lowering={"native": {"attention": "lcc op"}, "fallbacks": [], "notes": []},
                  checks=[{"stage": "hf-eager", "exact": True, "ok": True}])
    return Manifest(**(fields | changes))


def test_write_then_load_gives_the_same_manifest_and_bytes(tmp_path):
    m = sample_manifest()
    m.write(tmp_path)
    text = (tmp_path / "lcc.json").read_text()
    assert json.loads(text) == m.to_dict() and json.loads(text)["format"] == FORMAT == 2
    assert json.loads(text)["lcc_version"] == lcc.__version__
    back = artifact.load(tmp_path)
    assert back == m and back.model_id == "tiny-llama" and back.weights_hash == "ab12" and back["backend"] == "torch"
    (tmp_path / "again").mkdir()
    back.write(tmp_path / "again")  # writing what was read gives the same bytes
    assert (tmp_path / "again" / "lcc.json").read_text() == text
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys


def test_missing_manifest_says_to_compile(tmp_path):
    with pytest.raises(UsageError, match="no lcc.json.*lcc compile"):
        artifact.load(tmp_path)


def _future(d):
    d["format"] = FORMAT + 1


def _old(d):
    del d["format"]


def _newer_lcc(d):
    d["lcc_version"] = "99.0.0"


def _missing(d):
    del d["entries"]


def _mistyped(d):
    d["cache"] = 5


def _bad_cache(d):
    d["cache"] = {"batch": 1}


@pytest.mark.parametrize("damage, fragment", [
    ("{not json", "is not readable JSON"),
    ('"a string"', "is not a JSON object"),
    (_future, f"artifact format {FORMAT + 1}, written by a newer lcc"),
    (_old, "artifact format 1, written by an older lcc"),
    (_newer_lcc, "written by lcc 99.0.0, newer than this lcc"),
    (_missing, "lacks entries"),
    (_mistyped, "has cache of type int, not dict"),
    (_bad_cache, "has a cache layout this lcc cannot read"),
])
def test_a_bad_manifest_is_one_line_exit_2_from_lcc_run(tmp_path, damage, fragment):
    sample_manifest().write(tmp_path)
    path = tmp_path / "lcc.json"
    if callable(damage):
        d = json.loads(path.read_text())
        damage(d)
        path.write_text(json.dumps(d))
    else:
        path.write_text(damage)
    with pytest.raises(UsageError, match="recompile"):
        artifact.load(tmp_path)
    r = subprocess.run([sys.executable, "-m", "lcc", "run", str(tmp_path), "--prompt", "x"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"lcc: error: {path}") and fragment in lines[0] and "recompile" in lines[0], lines[0]


def test_kv_quant_signatures_list_the_real_quantized_cache_tensors(tiny):
    from lcc.capture import capture
    from lcc.passes import apply_passes, canonicalize, parse_pass

    base = canonicalize(capture(tiny("llama"), 128))
    program = apply_passes(base, [parse_pass("kv-quant:bits=4,group=8,residual=16")])
    want = program.cache.empty()
    assert len(want) > 2 * program.cache.layers  # codes, scales, zeros, residual ring per K and V
    for entry, skip in (("prefill", 1), ("decode", 2)):
        sig = entry_signatures(program)[entry]
        for io in ("inputs", "outputs"):
            cache = sig[io][skip if io == "inputs" else 1:]
            assert [(c["shape"], c["dtype"]) for c in cache] == [(list(t.shape), str(t.dtype)[6:]) for t in want]
            assert [c["name"] for c in cache] == [n for n, _, _ in program.cache.tensors]
    assert {c["dtype"] for c in entry_signatures(program)["decode"]["inputs"][2:]} != {"float32"}
    plain = entry_signatures(base)["prefill"]["inputs"][1:]
    assert [c["name"] for c in plain[:4]] == ["k_0", "v_0", "k_1", "v_1"]
    assert [(c["shape"], c["dtype"]) for c in plain] == [(list(t.shape), "float32") for t in base.cache.empty()]
    decode_out = entry_signatures(program)["decode"]["outputs"]
    assert decode_out[0] == {"name": "logits", "shape": [1, 1, program.spec.vocab], "dtype": "float32"}
