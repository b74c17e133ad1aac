"""The compile cache: a hit runs no stage and gives the same files; any key input changes the key; a damaged
entry is deleted and rebuilt, never used; --no-cache bypasses it; its size is bounded."""

import json
from pathlib import Path

import pytest

from lcc import compile_cache
from lcc.compile import Stages, cache_inputs, compile_model
from lcc.errors import UsageError
from lcc.integrity import verify
from lcc.passes import parse_pass

FLASH = [parse_pass("flash")]
DEVICE = "h100"  # a shipped profile: the temporary $LCC_CACHE has no calibrated cpu one


class Counted(Stages):
    """The stages a compile started: none on a cache hit."""

    def __init__(self):
        self.started = []

    def start(self, stage, total=None):
        self.started.append(stage)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(compile_cache.MAX_ENV, raising=False)
    return tmp_path / "cache" / "compiled"


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def compile_tiny(loaded, out, passes=FLASH, length=128, **kw):
    stages = Counted()
    result = compile_model(loaded, length, "torch", passes, out, device=DEVICE, progress=stages, cache=True, **kw)
    return result, stages.started


def test_a_second_identical_compile_is_a_hit_that_runs_no_stage(tmp_path, tiny, cache):
    loaded = tiny("llama")
    first, started = compile_tiny(loaded, tmp_path / "a")
    assert not first.cached and started[:2] == ["check", "capture"]
    assert len(compile_cache.entries()) == 1
    second, started = compile_tiny(loaded, tmp_path / "b")
    assert second.cached and started == []
    assert files(tmp_path / "a") == files(tmp_path / "b")
    verify(tmp_path / "b")
    assert second.manifest.to_dict() == first.manifest.to_dict()
    assert second.report["lowered"] == first.report["lowered"]
    assert set(first.report["stage_seconds"]) == {"check", "capture", "lower", "check lowered", "report"}
    # a hit onto an existing artifact needs --force like a compile, and replaces it
    with pytest.raises(UsageError, match="--force"):
        compile_tiny(loaded, tmp_path / "b")
    third, started = compile_tiny(loaded, tmp_path / "b", force=True)
    assert third.cached and started == [] and files(tmp_path / "b") == files(tmp_path / "a")


def test_every_key_input_changes_the_key(tiny, cache, monkeypatch):
    import lcc

    loaded = tiny("llama")
    base = dict(weights_hash=loaded.weights_hash, model_id="tiny-llama", target_len=128, backend_name="torch",
                passes=FLASH, device=DEVICE, dtype="float32", kv_cache_dtype=None, target=None)
    changes = {"weights_hash": "0" * 16, "model_id": "other/tiny-llama", "target_len": 256, "backend_name": "onnx",
               "passes": [parse_pass("flash"), parse_pass("sliding-window:window=16")], "device": "a100-80gb",
               "dtype": "bfloat16", "kv_cache_dtype": "float16", "target": "cuda"}
    keys = {"base": compile_cache.key_of(cache_inputs(**base))}
    for name, value in changes.items():
        keys[name] = compile_cache.key_of(cache_inputs(**{**base, name: value}))
    keys["planned"] = compile_cache.key_of(cache_inputs(**{**base, "passes": None}))
    keys["no passes"] = compile_cache.key_of(cache_inputs(**{**base, "passes": []}))
    # the same passes spelled otherwise are the same compile
    same = compile_cache.key_of(cache_inputs(**{**base, "passes": [parse_pass("flash:")]}))
    assert same == keys["base"]
    # the plan's inputs: quality records of these weights, a recalibrated profile
    planned = {**base, "passes": None}
    records = cache.parent / "quality" / f"{loaded.weights_hash}.json"
    records.parent.mkdir(parents=True)
    records.write_text(json.dumps({"format": 1, "rows": []}))
    keys["records"] = compile_cache.key_of(cache_inputs(**planned))
    from lcc.cost.hardware import BUILTIN_DIR

    profile = cache.parent / "profiles" / "h100.toml"
    profile.parent.mkdir(parents=True)
    profile.write_text((BUILTIN_DIR / "h100.toml").read_text().replace("bandwidth =", "bandwidth = 1.0 #"))
    keys["recalibrated profile"] = compile_cache.key_of(cache_inputs(**base))
    monkeypatch.setattr(lcc, "__version__", "9.9.9")
    keys["lcc version"] = compile_cache.key_of(cache_inputs(**base))
    assert len(set(keys.values())) == len(keys), keys


def test_a_changed_input_misses(tmp_path, tiny, cache):
    loaded = tiny("llama")
    compile_tiny(loaded, tmp_path / "a")
    result, started = compile_tiny(loaded, tmp_path / "b", length=256)
    assert not result.cached and "lower" in started
    result, started = compile_tiny(loaded, tmp_path / "c", passes=[])
    assert not result.cached and "lower" in started
    assert len(compile_cache.entries()) == 3


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["weights", "key", "missing"])
def test_a_damaged_entry_is_deleted_and_rebuilt_never_used(tmp_path, tiny, cache, capsys, damage):
    loaded = tiny("llama")
    compile_tiny(loaded, tmp_path / "a")
    (entry,) = compile_cache.entries()
    if damage == "weights":
        target = entry / "artifact" / "weights.safetensors"
        target.unlink()  # a fresh file, so --out's hard link to the old one is left alone
        target.write_bytes((tmp_path / "a" / "weights.safetensors").read_bytes())
        _flip_a_byte(target)
    elif damage == "key":  # stale: its inputs no longer hash to its name
        key = json.loads((entry / "key.json").read_text())
        (entry / "key.json").unlink()
        (entry / "key.json").write_text(json.dumps({**key, "target_len": 64}))
    else:
        (entry / "artifact" / "prefill.json").unlink()
    capsys.readouterr()
    result, started = compile_tiny(loaded, tmp_path / "b")
    assert not result.cached and "lower" in started
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and entry.name[:12] in err[0], err
    verify(tmp_path / "b")
    verify(entry / "artifact")  # rebuilt under the same key
    assert files(entry / "artifact") == files(tmp_path / "b")
    again, started = compile_tiny(loaded, tmp_path / "c")
    assert again.cached and started == []


def test_no_cache_bypasses_and_stores_nothing(tmp_path, tiny, cache):
    loaded = tiny("llama")
    stages = Counted()
    compile_model(loaded, 128, "torch", FLASH, tmp_path / "a", device=DEVICE, progress=stages)
    assert "lower" in stages.started and compile_cache.entries() == []
    compile_tiny(loaded, tmp_path / "b")
    stages = Counted()
    result = compile_model(loaded, 128, "torch", FLASH, tmp_path / "c", device=DEVICE, progress=stages, cache=False)
    assert not result.cached and "lower" in stages.started


def test_the_cache_keeps_the_newest_entries_within_its_bound(tmp_path, tiny, cache, monkeypatch):
    loaded = tiny("llama")
    compile_tiny(loaded, tmp_path / "a")
    (first,) = compile_cache.entries()
    size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    monkeypatch.setenv(compile_cache.MAX_ENV, str(int(size * 1.5)))
    compile_tiny(loaded, tmp_path / "b", passes=[])
    (kept,) = compile_cache.entries()
    assert kept != first and not first.exists()
    monkeypatch.setenv(compile_cache.MAX_ENV, "10G")
    with pytest.raises(UsageError, match=compile_cache.MAX_ENV):
        compile_tiny(loaded, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    monkeypatch.setenv(compile_cache.MAX_ENV, "0")  # off: no lookup, nothing stored
    result, started = compile_tiny(loaded, tmp_path / "d", passes=[])
    assert not result.cached and "lower" in started and compile_cache.entries() == [kept]


def test_cli_compile_hits_the_cache_without_loading_the_weights(tmp_path, tiny, cache, monkeypatch, capsys):
    from lcc.cli import main
    from lcc.models import loader

    args = ["compile", "tiny-llama", "--target-len", "128", "--pass", "flash", "--profile", DEVICE]
    assert main([*args, "--out", str(tmp_path / "a"), "--no-cache"]) == 0
    assert compile_cache.entries() == []
    assert main([*args, "--out", str(tmp_path / "a"), "--force"]) == 0
    assert len(compile_cache.entries()) == 1
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # a tiny preset: hashed by loading, then a hit
    assert "(from the compile cache)" in capsys.readouterr().out

    def no_load(*a, **k):
        raise AssertionError("a cache hit loaded the model")

    monkeypatch.setattr(loader, "cached_weights_hash", lambda name: tiny("llama").weights_hash)
    monkeypatch.setattr("lcc.models.load_model", no_load)
    monkeypatch.setattr(loader, "load_model", no_load)
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    assert "(from the compile cache)" in capsys.readouterr().out
    assert files(tmp_path / "c") == files(tmp_path / "a")
