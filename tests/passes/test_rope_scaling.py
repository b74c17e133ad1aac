"""The rope-scaling pass against transformers loaded with the same ``rope_parameters`` (logits, fp32)."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from lcc.capture import capture
from lcc.diff import hf_outputs, logit_limit, program_outputs
from lcc.errors import UsageError
from lcc.models.loader import _finish
from lcc.passes import apply_passes, canonicalize

CASES = [
    ({"rope_type": "linear", "factor": 2.0}, "rope-scaling:method=linear,factor=2"),
    ({"rope_type": "dynamic", "factor": 2.0}, "rope-scaling:method=dynamic-ntk,factor=2"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
     "rope-scaling:method=yarn,factor=4"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 16.0, "beta_slow": 2.0, "original_max_position_embeddings": 256},
     "rope-scaling:method=yarn,factor=4,beta_fast=16,beta_slow=2"),
    ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 256}, "rope-scaling:method=llama3,factor=4"),
]


def hf_with_rope(loaded, rope_parameters):
    config = copy.deepcopy(loaded.model.config)
    config.rope_parameters = {**rope_parameters, "rope_theta": loaded.spec.rotary.theta}
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.model.state_dict(), strict=False)  # inv_freq is rebuilt from the config
    return _finish(model, loaded.tokenizer, "hf-scaled", "", "")


@pytest.fixture(scope="module")
def base_program():
    from lcc.models import load_model

    loaded = load_model("tiny-llama")
    return loaded, canonicalize(capture(loaded, 512, entries=("prefill_full",)))


@pytest.mark.parametrize("rope_parameters,pass_text", CASES)
def test_pass_matches_transformers_scaled_model(rope_parameters, pass_text, base_program):
    loaded, program = base_program
    scaled = apply_passes(program, [pass_text])
    hf = hf_with_rope(loaded, rope_parameters)
    for n in (200, 500):  # inside and beyond the trained 256 tokens
        ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))
        want = hf_outputs(hf, ids).logits
        assert float((want - program_outputs(scaled, ids).logits).abs().max()) <= logit_limit(want)


def test_longrope_and_dynamic_models_capture_exactly():
    """Models whose own config uses a length-dependent rope are captured with the matching variant."""
    import transformers as T

    from lcc.models.tiny import _COMMON, byte_tokenizer

    config = T.Phi3Config(**{**_COMMON, "max_position_embeddings": 512}, partial_rotary_factor=0.5,
                          rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                           "short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [2.0, 3.0, 4.0, 5.0],
                                           "original_max_position_embeddings": 128})
    torch.manual_seed(0)
    loaded = _finish(AutoModelForCausalLM.from_config(config), byte_tokenizer(), "phi3-longrope", "", "")
    program = canonicalize(capture(loaded, 512, entries=("prefill_full",)))
    for n in (100, 400):  # short factors below 128 tokens of trained length, long factors past it
        ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))
        want = hf_outputs(loaded, ids).logits
        assert float((want - program_outputs(program, ids).logits).abs().max()) <= logit_limit(want)


def test_rope_scaling_changes_only_long_range_behaviour(base_program):
    loaded, program = base_program
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    base = program_outputs(program, ids).logits
    dyn = program_outputs(apply_passes(program, ["rope-scaling:method=dynamic-ntk,factor=4"]), ids).logits
    lin = program_outputs(apply_passes(program, ["rope-scaling:method=linear,factor=4"]), ids).logits
    assert torch.equal(dyn, base)  # dynamic NTK leaves lengths within the trained length alone
    assert float((lin - base).abs().max()) > 1e-3  # position interpolation does not


def test_bad_rope_parameters_are_usage_errors(base_program):
    _, program = base_program
    with pytest.raises(UsageError, match="not one of"):
        apply_passes(program, ["rope-scaling:method=magic"])
    with pytest.raises(UsageError, match="factor=0.0 is out of range"):
        apply_passes(program, ["rope-scaling:method=linear,factor=0"])
    with pytest.raises(UsageError):
        apply_passes(program, ["rope-scaling:method=longrope,factor=4,short_factor=a|b"])
