"""Hub ids (owner/name) resolve from the local Hugging Face cache only; absent, one line saying where lcc looked."""

import hashlib

import pytest
import torch

from lcc.errors import UsageError
from lcc.models import load_model

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _fake_hub_cache(root, repo, saved_dir):
    """The hub cache layout huggingface_hub writes: blobs named by content, snapshot links, refs/main."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    for f in saved_dir.iterdir():
        data = f.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(blob)
    return snapshot


def test_a_hub_id_loads_from_the_local_cache(tmp_path, monkeypatch, tiny):
    saved = tmp_path / "saved"
    tiny("llama").model.save_pretrained(saved)
    tiny("llama").tokenizer.save_pretrained(saved)
    _fake_hub_cache(tmp_path / "hub", REPO, saved)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LCC_CACHE", str(tmp_path / "lcc"))
    loaded = load_model(REPO)
    assert loaded.spec.model_id == REPO and loaded.spec.family == "llama"
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(loaded.model(ids).logits, tiny("llama").model(ids).logits)
    # the blob's name is the file's SHA-256: the hash needs no read
    weights = (saved / "model.safetensors").read_bytes()
    assert loaded.weights_hash == hashlib.sha256(weights).hexdigest()[:16]
    assert not (tmp_path / "lcc" / "hashes.json").exists()


def test_an_absent_hub_id_says_where_lcc_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(UsageError) as err:
        load_model("someone/not-downloaded")
    message = str(err.value)
    assert str(tmp_path / "empty-hub") in message and "huggingface-cli download someone/not-downloaded" in message
    assert "\n" not in message


def test_hf_home_is_honoured_when_hf_hub_cache_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(UsageError, match=str(tmp_path / "home" / "hub")):
        load_model("someone/not-downloaded")
