"""The weights hash from file identity: the files are read once, then their size and mtime stand for them."""

import hashlib
import json
import os

import pytest

from lcc.models import hashing, load_model


@pytest.fixture
def hf_dir(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model"
    tiny("llama").model.save_pretrained(path)
    return path


def test_the_hash_is_the_files_sha256_and_a_second_load_reads_no_weights(hf_dir, monkeypatch, tmp_path):
    weights = hf_dir / "model.safetensors"
    first = load_model(hf_dir)
    assert first.weights_hash == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    stored = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert stored[str(weights.resolve())]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    def fail(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(hashing, "sha256_file", fail)
    assert load_model(hf_dir).weights_hash == first.weights_hash
    assert load_model(hf_dir, weights=False).weights_hash == first.weights_hash


def test_touching_or_changing_a_file_hashes_it_again(hf_dir, monkeypatch):
    from safetensors.torch import load_file, save_file

    weights = hf_dir / "model.safetensors"
    first = load_model(hf_dir).weights_hash
    calls, real = [], hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda path: calls.append(path) or real(path))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_model(hf_dir).weights_hash == first and len(calls) == 1  # touched: read again, same bytes
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    assert load_model(hf_dir).weights_hash != first and len(calls) == 2


def test_a_weights_free_load_never_reads_the_files(hf_dir, monkeypatch):
    monkeypatch.setattr(hashing, "sha256_file", lambda path: pytest.fail(f"{path} was read"))
    assert load_model(hf_dir, weights=False).weights_hash == ""


def test_a_hub_blob_is_named_by_its_content_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "sha256_file", lambda path: pytest.fail(f"{path} was read"))
    digest = hashlib.sha256(b"weights").hexdigest()
    blob = tmp_path / "models--o--m" / "blobs" / digest
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"weights")
    link = tmp_path / "models--o--m" / "snapshots" / "abc" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    assert hashing.weights_hash([link]) == digest[:16]


def test_several_files_hash_to_one_value_that_follows_each(tmp_path, monkeypatch):
    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    both = hashing.weights_hash([b, a])
    expected = hashlib.sha256("\n".join(hashlib.sha256(x).hexdigest() for x in (b"one", b"two")).encode())
    assert both == expected.hexdigest()[:16]
    b.write_bytes(b"three")
    assert hashing.weights_hash([a, b]) != both


def test_a_corrupt_hash_cache_is_rebuilt(hf_dir, tmp_path):
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / "hashes.json").write_text("{not json")
    weights = hf_dir / "model.safetensors"
    assert load_model(hf_dir).weights_hash == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert str(weights.resolve()) in json.loads((tmp_path / "cache" / "hashes.json").read_text())


def test_the_cheap_hash_hook_knows_a_hash_only_once_it_was_computed(hf_dir):
    from lcc.models.loader import cached_weights_hash

    assert cached_weights_hash(hf_dir) is None
    assert cached_weights_hash(hf_dir) is None  # asking computes nothing
    full = load_model(hf_dir).weights_hash
    assert cached_weights_hash(hf_dir) == full
