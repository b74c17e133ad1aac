"""Passes per layer kind on Gemma 3 (local layers: base 10k, window 16; the global layer: base 1M, linear x8):
rope-scaling scales the global layers only and composes linear with linear, as transformers runs the product
factor; other methods on a scaled model are refused; sliding-window never widens a local layer."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from lcc.capture import capture
from lcc.diff import hf_outputs, logit_limit, program_outputs
from lcc.errors import UsageError
from lcc.models.loader import LoadedModel
from lcc.models.spec import spec_from_model
from lcc.passes import apply_passes, canonicalize
from lcc.passes.graph import ATTENTION, get_arg, lcc_nodes


@pytest.fixture(scope="module")
def gemma3():
    from lcc.models import load_model

    loaded = load_model("tiny-gemma3")
    return loaded, canonicalize(capture(loaded, 64, entries=("prefill_full",)))


def _hf_global_linear(loaded, factor: float):
    """The same weights under transformers with the global layers' linear factor set to ``factor``."""
    config = copy.deepcopy(loaded.model.config)
    config.rope_parameters = {**config.rope_parameters,
                              "full_attention": {**config.rope_parameters["full_attention"], "factor": factor}}
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.model.state_dict(), strict=False)  # inv_freq is rebuilt from the config
    model.eval()
    return LoadedModel(model, loaded.tokenizer, spec_from_model(model, "hf-gemma3-x16"), "", "")


def test_linear_on_linear_scales_the_global_layers_by_the_product(gemma3):
    loaded, program = gemma3
    scaled = apply_passes(program, ["rope-scaling:method=linear,factor=2"])
    want_model = _hf_global_linear(loaded, 16.0)
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(3))
    want = hf_outputs(want_model, ids).logits
    assert float((want - program_outputs(scaled, ids).logits).abs().max()) <= logit_limit(want)
    # the oracle tells the factors apart: the unscaled program is off it
    assert float((want - program_outputs(program, ids).logits).abs().max()) > 100 * logit_limit(want)


@pytest.mark.parametrize("method", ["yarn", "ntk", "dynamic-ntk"])
def test_a_method_that_does_not_compose_with_linear_is_refused_in_one_line(gemma3, method):
    _, program = gemma3
    with pytest.raises(UsageError) as e:
        apply_passes(program, [f"rope-scaling:method={method},factor=2"])
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert "already uses RoPE scaling" in message and "composes only method=linear" in message


def test_sliding_window_never_widens_a_local_layer(gemma3):
    _, program = gemma3

    def masks(p):
        nodes = sorted(lcc_nodes(p.entries["prefill_full"], ATTENTION), key=lambda n: n.meta["lcc_layer"])
        return [get_arg(n, "mask") for n in nodes]

    wide = apply_passes(program, ["sliding-window:window=32,sinks=0"])
    assert masks(wide) == ["sliding:window=16,sinks=0"] * 2 + ["sliding:window=32,sinks=0"]
    narrow = apply_passes(program, ["sliding-window:window=8,sinks=0"])
    assert masks(narrow) == ["sliding:window=8,sinks=0"] * 3


@pytest.mark.parametrize("spec", ["kv-quant", "linear-attention", "rerope", "self-extend:group=2,window=32"])
def test_a_pass_whose_attention_has_no_soft_cap_refuses_gemma2_in_one_line(spec):
    """Gemma 2 soft-caps every layer's scores (attn_logit_softcapping); kv-quant's, linear attention's and the remapped-position op do not,
    so they refuse instead of silently dropping the cap."""
    from lcc.models import load_model

    loaded = load_model("tiny-gemma2")
    cap = loaded.model.config.attn_logit_softcapping
    base = canonicalize(capture(loaded, capacity=64, entries=("prefill", "decode")))
    with pytest.raises(UsageError, match=f"layer 0 soft-caps its attention scores \\(softcap={cap:g}\\)") as err:
        apply_passes(base, [spec])
    assert "\n" not in str(err.value)
