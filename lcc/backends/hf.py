"""The ``hf`` backend: a transformers-loadable directory, for plans that an HF config can express.

``lower`` writes ``model.safetensors`` (the program's weights once, under transformers' names, in
the chosen dtype; a tied output embedding is left out, as ``save_pretrained`` leaves it),
``config.json`` (the source model's config with the plan written into it: ``rope_parameters``
for the RoPE method, ``max_position_embeddings`` = the target length, sliding windows,
``dtype``) and ``generation_config.json``, so vLLM, llama.cpp's converter or transformers
read the compiled model.  A pass outside :data:`EXPRESSIBLE` (rerope, kv-quant, sink caches or
windows, sparse or linear attention, memory tokens, ...) is refused with one line naming it.
Static NTK is the default RoPE with base b s^(R/(R-2)); dynamic NTK keeps max_position_embeddings
at the trained length (transformers measures lengths against it).  transformers' RoPE built from
the config is checked against the program's frequencies.  ``load`` runs the directory with
transformers (safetensors only, no remote code) over lcc's explicit cache, so the compile's
lowered check proves that transformers reads the export as lcc meant it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lcc.backends import DTYPES, Lowered, check_dtype, check_program_dtype
from lcc.errors import UsageError
from lcc.graph import ATTENTION, ROPE, get_arg, lcc_nodes
from lcc.models.support import check_config, rotary_tables
from lcc.ops.masks import MaskSpec
from lcc.passes import parse_pass

WEIGHTS, CONFIG, GENERATION = "model.safetensors", "config.json", "generation_config.json"
EXPRESSIBLE = ("rope-scaling", "sliding-window", "flash", "attention-chunked")  # passes an HF config can say
ROPE_TYPES = {"linear": "linear", "ntk": "default", "dynamic-ntk": "dynamic", "yarn": "yarn", "llama3": "llama3"}
_PREFIX = "model."  # capture wraps the HF module as ``model`` (lcc.capture.export)


def entry_graph(program):
    """The graph the export is read from: prefill, else any entry (they share weights, masks and RoPE)."""
    return program.entries.get("prefill") or next(iter(program.entries.values()))


def _refuse(spec, why: str = "in a transformers config") -> UsageError:
    return UsageError(f"the hf backend cannot express pass '{spec}' {why}; use --backend torch|onnx|tvm|triton")


def check_passes(passes) -> dict:
    """``{pass name: PassSpec}`` of ``passes`` (specs or their strings), or a UsageError naming the first pass
    an HF config cannot express."""
    found = {}
    for spec in passes:
        spec = parse_pass(spec) if isinstance(spec, str) else spec
        if spec.name not in EXPRESSIBLE or (spec.name == "sliding-window" and spec.kwargs["sinks"]):
            raise _refuse(spec)
        if spec.name == "rope-scaling" and spec.kwargs["method"] not in ROPE_TYPES:
            raise _refuse(spec, "(no transformers rope_type computes this method)")
        found[spec.name] = spec
    return found


# ---- the config --------------------------------------------------------------------------------


def source_config(program) -> tuple[dict, dict | None]:
    """The HF config of the model the program was captured from (and its generation config, if known).

    From ``program.meta["hf_config"]`` where the capture recorded it; else from the program's model id
    loaded weights-free (:func:`lcc.models.load_model`: presets, HF directories, hub ids), checked
    against the program's spec.
    """
    if "hf_config" in program.meta:
        return dict(program.meta["hf_config"]), program.meta.get("generation_config")
    from lcc.models import load_model

    model_id = program.meta.get("model_id") or program.spec.model_id
    try:
        model = load_model(model_id, weights=False).model
    except UsageError as e:
        raise UsageError(f"the hf backend needs the HF config of {model_id}, which does not load ({e})")
    spec, text = program.spec, model.config.get_text_config()
    if (text.num_hidden_layers, text.hidden_size, text.vocab_size) != (spec.layers, spec.hidden, spec.vocab):
        raise UsageError(f"the config found for {model_id} does not describe the compiled program "
                         f"({text.num_hidden_layers} layers, hidden {text.hidden_size}, vocab {text.vocab_size}); "
                         "compile from the model's HF directory")
    generation = getattr(model, "generation_config", None)
    return model.config.to_dict(), generation.to_dict() if generation is not None else None


def rope_config(program, spec, source: dict) -> tuple[dict, int]:
    """``(rope_parameters, max_position_embeddings)`` for the rope-scaling pass ``spec`` (None: the model's own)."""
    target, rope = program.cache.capacity, dict(source.get("rope_parameters") or {})
    if rope and all(isinstance(v, dict) for v in rope.values()):  # one entry per layer type (Gemma 3)
        if spec is not None:
            raise _refuse(spec, "on a model with per-layer-type rope_parameters (transformers keeps one entry per "
                                "layer type; lcc does not write them yet)")
        return rope, target
    if spec is None:
        if rope.get("rope_type") == "dynamic":  # its lengths are measured against max_position_embeddings
            return rope, source["max_position_embeddings"]
        if rope.get("rope_type") in ("yarn", "longrope") and not rope.get("factor"):  # implied by max_position
            rope["factor"] = source["max_position_embeddings"] / rope["original_max_position_embeddings"]
        return rope, target
    kw = spec.kwargs
    method, factor, original = kw["method"], kw["factor"], kw["original"] or program.spec.trained_len
    theta, dim = program.spec.rotary.theta, program.spec.rotary.rotary_dim
    keep = {k: v for k, v in rope.items() if k == "partial_rotary_factor"}
    if method == "ntk":  # NTK-aware scaling is a new base: b' = b s^(R/(R-2)) (lcc.ops.rope_scaling.ntk)
        return {**keep, "rope_type": "default", "rope_theta": theta * factor ** (dim / (dim - 2))}, target
    rope = {**keep, "rope_type": ROPE_TYPES[method], "rope_theta": theta, "factor": factor}
    if method == "dynamic-ntk":
        return rope, original
    if method == "yarn":
        if not kw["beta_fast"] or not kw["beta_slow"]:
            raise _refuse(spec, "(transformers reads a zero beta as its default)")
        rope.update(beta_fast=kw["beta_fast"], beta_slow=kw["beta_slow"])
        if kw["attention_factor"]:
            rope["attention_factor"] = kw["attention_factor"]
    if method == "llama3":
        rope.update(low_freq_factor=kw["low_freq_factor"], high_freq_factor=kw["high_freq_factor"])
    if method in ("yarn", "llama3"):
        rope["original_max_position_embeddings"] = original
    return rope, target


def layer_windows(program) -> list[int | None]:
    """Per layer, the sliding window of its attention (None: causal), read from the entry graph's masks."""
    nodes = lcc_nodes(entry_graph(program), ATTENTION)
    if len(nodes) != program.spec.layers:
        raise UsageError(f"the hf backend needs one lcc.attention per layer; the program has {len(nodes)} for "
                         f"{program.spec.layers} layers")
    windows = []
    for node in nodes:
        mask = MaskSpec.parse(get_arg(node, "mask"))
        if mask.kind == "sliding" and not mask.args["sinks"]:
            windows.append(mask.args["window"])
        elif mask.kind == "causal":
            windows.append(None)
        else:
            raise UsageError(f"the hf backend cannot express the attention mask {mask} in a transformers config; "
                             "use --backend torch|onnx|tvm|triton")
    return windows


def window_config(windows: list[int | None], source: dict, spec) -> dict:
    """The config fields that give ``windows``: per-layer ``layer_types`` (qwen2, qwen3) or one ``sliding_window``
    for all layers (mistral, phi3); a refusal where the family's config cannot say them."""
    from transformers import CONFIG_MAPPING

    fields = CONFIG_MAPPING[source["model_type"]]().to_dict()
    sizes = sorted({w for w in windows if w is not None})
    out = {"sliding_window": sizes[0] if sizes else None} if "sliding_window" in fields else {}
    if "layer_types" in fields:
        out["layer_types"] = ["sliding_attention" if w else "full_attention" for w in windows]
        if "use_sliding_window" in fields:
            out["use_sliding_window"] = bool(sizes)
    if not sizes:
        return out
    why = ("has no sliding window" if "sliding_window" not in fields else
           "has one window size for all layers" if len(sizes) > 1 else
           "slides every layer or none" if None in windows and "layer_types" not in fields else None)
    if why:
        what = f"pass '{spec}'" if spec is not None else f"the windows {windows}"
        raise UsageError(f"the hf backend cannot express {what} for {source['model_type']}: its transformers config "
                         f"{why}; use --backend torch|onnx|tvm|triton")
    return out


def build_config(program, passes: dict, dtype: str):
    """The transformers config of the compiled program (see the module doc), and its generation config."""
    from transformers import AutoConfig, GenerationConfig

    source, generation = source_config(program)
    source = {k: v for k, v in source.items()
              if k not in ("auto_map", "quantization_config", "transformers_version", "torch_dtype", "_name_or_path")}
    rope, max_position = rope_config(program, passes.get("rope-scaling"), source)
    fields = {**source, **window_config(layer_windows(program), source, passes.get("sliding-window")),
              "rope_parameters": rope, "max_position_embeddings": max_position, "dtype": dtype}
    model_type = fields.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **fields)
        read_as = _rope_types(config.rope_parameters)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        read_as = f"an error ({str(e).splitlines()[0][:120]})"
    if read_as != _rope_types(rope):
        why = f"for {model_type} (transformers reads rope_type {rope.get('rope_type')!r} as {read_as})"
        if "rope-scaling" in passes:
            raise _refuse(passes["rope-scaling"], why)
        raise UsageError(f"the hf backend cannot write the model's own RoPE {why}")
    generation = GenerationConfig.from_dict(generation) if generation else GenerationConfig.from_model_config(config)
    return config, generation


def _rope_types(rope: dict):
    """The rope_type of flat ``rope_parameters``, or ``{layer type: rope_type}`` of per-layer-type ones."""
    if rope and all(isinstance(v, dict) for v in rope.values()):
        return {k: v.get("rope_type", "default") for k, v in rope.items()}
    return rope.get("rope_type", "default")


def _tensor(gm: torch.nn.Module, target: str) -> torch.Tensor:
    for part in target.split("."):
        gm = getattr(gm, part)
    return gm


def check_rope(config, model, program) -> None:
    """transformers' rotary embedding built from ``config`` has the program's frequencies and scaling."""
    rotary = next((m for name, m in model.named_modules() if name.endswith("rotary_emb")), None)
    if rotary is None:
        raise RuntimeError(f"{type(model).__name__} has no rotary_emb module: the hf backend cannot check its RoPE")
    tables = list(rotary_tables(type(rotary)(config)).values())  # one, or one per layer type (Gemma 3)
    gm = entry_graph(program)
    for node in lcc_nodes(gm, ROPE):  # every rope node's frequencies are one of transformers' tables
        want = _tensor(gm, get_arg(node, "inv_freq").target)
        scaling = float(get_arg(node, "attention_scaling"))
        if not any(torch.allclose(inv.float(), want.float(), rtol=1e-6, atol=0)
                   and abs(float(att) - scaling) <= 1e-6 * abs(scaling) for inv, att in tables):
            raise RuntimeError(f"transformers reads rope_parameters {config.rope_parameters} as other frequencies "
                               f"than the program's: the hf backend's RoPE mapping is wrong")


# ---- the weights -------------------------------------------------------------------------------


def hf_weights(program, model) -> dict[str, torch.Tensor]:
    """The program's weights under the names of ``model`` (an HF module, meta device is fine), each once.

    Names are the program's minus the capture's wrapper prefix.  Weights HF ties together (the output
    embedding) are stored once under the name ``save_pretrained`` keeps, whichever of their names the
    program holds, after checking that the program's copies are equal.
    """
    gm = entry_graph(program)
    have = {name.removeprefix(_PREFIX): t
            for name, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]}
    names: dict[str, list[str]] = {}  # the name kept -> every name of that tensor in ``model``
    first: dict[int, str] = {}
    shapes = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(first.setdefault(id(t), name), []).append(name)
        shapes[name] = tuple(t.shape)
    persistent = set(model.state_dict())
    out, missing = {}, []
    for name, aliases in names.items():
        if name not in persistent:  # inv_freq and other buffers HF does not save
            continue
        found = [have[a] for a in aliases if a in have]
        if not found:
            missing.append(name)
        elif any(not torch.equal(found[0], t) for t in found[1:]):
            raise UsageError(f"the program's {' and '.join(aliases)} differ, but the config ties them: "
                             "the hf backend cannot export it")
        elif tuple(found[0].shape) != shapes[name]:
            raise RuntimeError(f"{name}: the program holds {tuple(found[0].shape)}, HF expects {shapes[name]}")
        else:
            out[name] = found[0].detach().contiguous()
    extra = sorted({n.removeprefix(_PREFIX) for n, _ in gm.named_parameters(remove_duplicate=False)} - set(shapes))
    if missing or extra:
        raise UsageError(f"the program's weights are not {type(model).__name__}'s (missing {missing[:3]}, extra "
                         f"{extra[:3]}): the hf backend exports programs whose weights are the HF model's")
    return out


# ---- the backend -------------------------------------------------------------------------------


class HFProgram:
    """A transformers model behind lcc's entry-point signatures; the explicit cache is read and written in place.

    Each call fills a ``DynamicCache`` with the cache's first ``position`` tokens, runs the model on the
    new tokens at their positions, and writes their keys and values back into the given tensors, which
    it returns.  A dynamic-NTK model keeps transformers' own state across calls (the largest length's
    basis while lengths stay past the trained one).
    """

    def __init__(self, model):
        self.model = model
        self.layers = model.config.get_text_config().num_hidden_layers
        self.entries = {"prefill": lambda ids, *cache: self.run(ids, 0, cache, 1),
                        "prefill_logits": lambda ids, *cache: self.run(ids, 0, cache, 0),
                        "prefill_full": lambda ids, *cache: self.run(ids, 0, cache, 0, hidden=True),
                        "decode": lambda ids, position, *cache: self.run(ids, int(position), cache, 1)}

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, start: int, cache, keep: int, hidden: bool = False) -> tuple:
        """(logits of the last ``keep`` positions (0: all)[, hidden states [L+1, B, S, H]], *cache)."""
        from transformers import DynamicCache

        dtype, n = self.model.dtype, ids.shape[1]
        filled = [t[:, :, :start].to(dtype) for t in cache]
        past = DynamicCache(ddp_cache_data=list(zip(filled[0::2], filled[1::2])) if start else None)
        positions = torch.arange(start, start + n, device=ids.device)
        out = self.model(input_ids=ids, position_ids=positions.expand(ids.shape[0], n), cache_position=positions,
                         past_key_values=past, use_cache=True, logits_to_keep=keep, output_hidden_states=hidden)
        for i, layer in enumerate(past.layers):
            cache[2 * i][:, :, start:start + n] = layer.keys[:, :, start:]
            cache[2 * i + 1][:, :, start:start + n] = layer.values[:, :, start:]
        if hidden:
            return (out.logits.float(), torch.stack(out.hidden_states).float(), *cache)
        return (out.logits.float(), *cache)


class HFBackend:
    """``lcc compile --backend hf``: an HF directory (safetensors + config) that transformers and engines load."""

    name = "hf"
    dtypes = DTYPES

    def available(self) -> str | None:
        return None

    def lower(self, program, out_dir, *, target=None, dtype="float32", entries=None, progress=None) -> Lowered:
        """Write ``model.safetensors``, ``config.json`` and ``generation_config.json``; every entry runs from them,
        on any ``target``."""
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM

        check_dtype(self, dtype)
        check_program_dtype(program, dtype)
        step = progress or (lambda _: None)
        passes = check_passes(program.passes)
        if not program.cache.plain:
            raise UsageError(f"the hf backend cannot express a {program.cache.kind} cache; use --backend torch|onnx")
        config, generation = build_config(program, passes, dtype)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        config.architectures = config.architectures or [type(model).__name__]
        check_rope(config, model, program)
        step("config")
        weights = hf_weights(program, model)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(out_dir / WEIGHTS), metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out_dir / WEIGHTS, 0o666 & ~umask)  # safetensors writes 0600; the directory is meant to be shared
        step("weights")
        config.save_pretrained(out_dir)
        generation.save_pretrained(out_dir)
        rope = config.rope_parameters
        return Lowered([WEIGHTS, CONFIG, GENERATION],
                       native={"attention": "transformers attention (config.json)",
                               "rope": f"transformers rope_type {rope.get('rope_type', 'default')!r}"},
                       notes=[f"rope_parameters {json.dumps(rope, sort_keys=True)}",
                              f"max_position_embeddings {config.max_position_embeddings}, sliding_window "
                              f"{getattr(config, 'sliding_window', None)}"])

    def load(self, out_dir, manifest=None) -> HFProgram:
        """The directory loaded by transformers: its config (no remote code) and safetensors weights only."""
        from transformers import AutoConfig, AutoModelForCausalLM

        out_dir = Path(out_dir)
        missing = [f for f in (CONFIG, WEIGHTS) if not (out_dir / f).is_file()]
        if missing:
            raise UsageError(f"{out_dir} lacks {', '.join(missing)}: it is not a complete hf artifact; recompile it")
        try:
            config = AutoConfig.from_pretrained(out_dir, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001  (transformers raises many types on a bad config)
            raise UsageError(f"{out_dir / CONFIG} is not a transformers config ({str(e).splitlines()[0][:120]}); "
                             "recompile the artifact")
        check_config(config, str(out_dir / CONFIG))  # the capability rule capture uses, not a list of families
        try:
            model = AutoModelForCausalLM.from_pretrained(out_dir, config=config, dtype=config.dtype,
                                                         use_safetensors=True, local_files_only=True,
                                                         trust_remote_code=False, attn_implementation="sdpa")
        except Exception as e:  # noqa: BLE001  (transformers and safetensors raise many types)
            raise UsageError(f"{out_dir / WEIGHTS} does not load with its config.json "
                             f"({str(e).splitlines()[0][:120]}); recompile the artifact")
        return HFProgram(model.eval())


BACKEND = HFBackend()
