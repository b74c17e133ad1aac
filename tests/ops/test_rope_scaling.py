"""RoPE scaling methods: transformers is the oracle where it implements a method, the paper's formula elsewhere.

transformers (and its llama modeling module, which imports triton) is imported inside the
tests, never at collection, so the Triton tests' interpreter switch is not pre-empted.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lcc.ops  # noqa: F401  (registers lcc.rope)
from lcc.ops import rope_scaling
from lcc.ops.rope_scaling import METHODS, default_inv_freq, from_rope_parameters

BASE, L = 10000.0, 64  # theta; trained length (small, so tests cross it cheaply)
SHORT = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
LONG = [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.5]

# (transformers rope_parameters, max_position_embeddings): each with its own explicit values
HF_CASES = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, L),
    "dynamic": ({"rope_type": "dynamic", "factor": 3.0}, L),
    "yarn": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": L}, 8 * L),
    "yarn-untruncated": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": L, "truncate": False,
                          "beta_fast": 16.0, "beta_slow": 2.0}, 8 * L),
    "yarn-mscale": ({"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": L, "mscale": 0.707,
                     "mscale_all_dim": 0.5}, 16 * L),
    "yarn-attention-factor": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L,
                               "attention_factor": 1.5}, 4 * L),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": L}, 8 * L),
    "longrope": ({"rope_type": "longrope", "factor": 4.0, "short_factor": SHORT, "long_factor": LONG,
                  "original_max_position_embeddings": L}, 4 * L),
    "longrope-implicit-factor": ({"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                                  "original_max_position_embeddings": L}, 32 * L),
}


def llama_config(rope_parameters=None, max_position=L, head_dim=16, partial=1.0, base=BASE):
    from transformers import LlamaConfig

    rp = {"rope_type": "default", **(rope_parameters or {}), "rope_theta": base}
    if partial != 1.0:
        rp["partial_rotary_factor"] = partial
    return LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=max_position,
                       rope_parameters=rp)


def hf_init(config, seq_len=None):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, "cpu", seq_len=seq_len)


# ---- inv_freq and attention scaling against transformers' ROPE_INIT_FUNCTIONS -------------------


@pytest.mark.parametrize("head_dim,partial", [(16, 1.0), (32, 0.5)])
@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_inv_freq_and_scaling_match_transformers_bit_for_bit(case, head_dim, partial):
    rope_parameters, max_position = HF_CASES[case]
    config = llama_config(rope_parameters, max_position, head_dim, partial)
    name, factor, original, params = from_rope_parameters(config.rope_parameters, max_position)
    dim = int(head_dim * partial)
    lengths = [None] + ([L // 2, L, L + 1, 5 * L, torch.tensor(3 * L)] if name in ("dynamic-ntk", "longrope") else [])
    for seq_len in lengths:
        expected, expected_scaling = hf_init(config, seq_len)
        if name == "dynamic-ntk":
            got, scaling = rope_scaling.dynamic_ntk(BASE, dim, factor, original, seq_len=seq_len)
        elif name == "longrope":
            got, scaling = rope_scaling.longrope(BASE, dim, factor, original, **params, seq_len=seq_len)
        else:
            got, scaling = METHODS[name].compute(BASE, dim, factor, original, **params)
        assert got.dtype == torch.float32 and torch.equal(got, expected), (case, seq_len)
        assert scaling == expected_scaling


@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(["yarn", "llama3", "linear", "dynamic"]),
       base=st.sampled_from([10000.0, 500000.0, 1e6]), half=st.integers(4, 64),
       factor=st.floats(1.0, 64.0), original=st.sampled_from([256, 2048, 8192]), truncate=st.booleans())
def test_parity_with_transformers_across_bases_dims_and_factors(method, base, half, factor, original, truncate):
    head_dim = 2 * half
    rp = {"rope_type": method, "factor": factor}
    if method in ("yarn", "llama3"):
        rp["original_max_position_embeddings"] = original
    if method == "yarn":
        rp["truncate"] = truncate
    if method == "llama3":
        rp.update(low_freq_factor=1.0, high_freq_factor=4.0)
    max_position = int(original * max(factor, 1.01)) + 1 if method != "dynamic" else original
    config = llama_config(rp, max_position, head_dim, base=base)
    expected, expected_scaling = hf_init(config)
    name, f, orig, params = from_rope_parameters(config.rope_parameters, max_position)
    got, scaling = METHODS[name].compute(base, head_dim, f, orig, **params)
    assert torch.equal(got, expected) and scaling == expected_scaling


# ---- end to end: a tiny Llama with scaled rope_parameters vs default weights + lcc.rope ----------


def cos_sin_of_op(setting, positions, dim):
    """cos and sin exactly as torch.ops.lcc.rope applies them: rotate x = (1, ..., 1, 0, ..., 0)."""
    x = torch.cat([torch.ones(dim // 2), torch.zeros(dim // 2)]).expand(positions.shape[0], 1, positions.shape[1], dim)
    out = torch.ops.lcc.rope(x.contiguous(), positions, setting.inv_freq, setting.attention_scaling, setting.variant)
    cos, sin = out[:, 0, :, : dim // 2], out[:, 0, :, dim // 2:]
    return torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)


def scaled_and_default_models(rope_parameters, max_position):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    default = LlamaForCausalLM(llama_config(None, max_position)).eval()
    scaled = LlamaForCausalLM(llama_config(rope_parameters, max_position)).eval()
    scaled.load_state_dict(default.state_dict())  # the rotary buffers are not persistent
    return scaled, default


@pytest.mark.parametrize("case", ["linear", "dynamic", "yarn", "llama3", "longrope"])
@pytest.mark.parametrize("length", [L // 2, L, L + 1, 3 * L])
def test_hf_rotary_module_cos_sin_equal_what_lcc_rope_applies(case, length):
    """Lengths below and above L: dynamic NTK and LongRoPE switch frequencies there (via the variant)."""
    rope_parameters, max_position = HF_CASES[case]
    scaled, _ = scaled_and_default_models(rope_parameters, max_position)  # fresh: HF's dynamic state is per module
    name, factor, original, params = from_rope_parameters(scaled.config.rope_parameters, max_position)
    setting = METHODS[name].setting(BASE, 16, factor, original, **params)
    positions = torch.arange(length).expand(2, length) + torch.tensor([[0], [3]])
    cos_hf, sin_hf = scaled.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = cos_sin_of_op(setting, positions, 16)
    torch.testing.assert_close(cos, cos_hf, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, sin_hf, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["linear", "dynamic", "yarn", "llama3", "longrope"])
@pytest.mark.parametrize("length", [L // 2, 2 * L])
def test_tiny_llama_logits_scaled_by_transformers_equal_lcc_rope_on_default_weights(case, length, monkeypatch):
    """Same weights: HF with the scaled rope_parameters vs HF default whose q/k rotation is lcc.rope."""
    from transformers.models.llama import modeling_llama

    rope_parameters, max_position = HF_CASES[case]
    scaled, default = scaled_and_default_models(rope_parameters, max_position)
    name, factor, original, params = from_rope_parameters(scaled.config.rope_parameters, max_position)
    s = METHODS[name].setting(BASE, 16, factor, original, **params)
    ids = torch.randint(0, 96, (2, length), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(length).expand(2, length)

    def lcc_rotary(q, k, cos, sin, unsqueeze_dim=1):
        rope = torch.ops.lcc.rope
        return (rope(q, positions, s.inv_freq, s.attention_scaling, s.variant),
                rope(k, positions, s.inv_freq, s.attention_scaling, s.variant))

    with torch.no_grad():
        expected = scaled(ids).logits
        monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", lcc_rotary)
        got = default(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ---- methods transformers lacks: the paper's formula, written out here --------------------------


def paper_theta(base, dim):
    return [base ** (-2 * i / dim) for i in range(dim // 2)]


@pytest.mark.parametrize("k", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_power_basis_follows_giraffe_formula(k, factor):
    """Giraffe §3 power scaling: theta_i' = (theta_i / s) (1 - 2i/R)^k."""
    dim = 64
    expected = torch.tensor([t / factor * (1 - 2 * i / dim) ** k for i, t in enumerate(paper_theta(BASE, dim))])
    got, scaling = METHODS["power"].compute(BASE, dim, factor, L, k=k)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=0)
    assert scaling == 1.0


def test_power_basis_properties():
    dim = 64
    original = default_inv_freq(BASE, dim)
    assert torch.equal(METHODS["power"].compute(BASE, dim, 1.0, L, k=0.0)[0], original)  # k = 0: the original basis
    got = METHODS["power"].compute(BASE, dim, 1.0, L, k=0.5)[0]
    assert got[0] == original[0]  # the fastest frequency is untouched
    ratio = got / original
    assert torch.all(ratio[1:] < ratio[:-1]) and torch.all(ratio <= 1)  # slower frequencies are stretched more
    assert torch.all(got > 0)


@pytest.mark.parametrize("wavelength", [0.0, 16.0, 1000.0])
def test_truncated_basis_follows_giraffe_formula(wavelength):
    """Giraffe §3 truncated basis: keep theta >= b, rho for a <= theta < b, 0 below a (b = 2pi/wavelength)."""
    dim = 64
    b = 2 * math.pi / (wavelength or L)
    a, rho = b / 8, b / 16

    def paper(t):
        return t if t >= b else (rho if t >= a else 0.0)

    thetas = default_inv_freq(BASE, dim).tolist()  # the fp32 basis, so band edges are decided on the same values
    expected = torch.tensor([paper(t) for t in thetas], dtype=torch.float32)
    got, _ = METHODS["truncate"].compute(BASE, dim, 1.0, L, wavelength=wavelength)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_truncated_basis_properties():
    dim = 64
    original = default_inv_freq(BASE, dim)
    got, _ = METHODS["truncate"].compute(BASE, dim, 1.0, L)
    turns_within_l = 2 * math.pi / original <= L
    assert torch.equal(got[turns_within_l], original[turns_within_l])  # frequencies seen whole in training kept
    assert turns_within_l.any() and (got == 0).any() and len(set(got[~turns_within_l].tolist())) <= 2
    tiny_cutoff, _ = METHODS["truncate"].compute(BASE, dim, 1.0, L, wavelength=1e12)
    assert torch.equal(tiny_cutoff, original)  # a cutoff below every frequency keeps the original basis


def test_ntk_keeps_the_fastest_frequency_and_interpolates_the_slowest_by_s():
    """NTK-aware: b' = b s^(R/(R-2)) leaves theta_0 = 1 and divides theta_(R/2-1) by exactly s."""
    dim, s = 64, 8.0
    base_new = BASE * s ** (dim / (dim - 2))
    expected = torch.tensor([base_new ** (-2 * i / dim) for i in range(dim // 2)])
    got, _ = METHODS["ntk"].compute(BASE, dim, s, L)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=0)
    original = default_inv_freq(BASE, dim)
    assert got[0] == 1.0
    torch.testing.assert_close(got[-1], original[-1] / s, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_factor_one_gives_the_original_basis(name):
    dim = 32
    original = default_inv_freq(BASE, dim)
    params = {"short_factor": [1.0] * 16, "long_factor": [1.0] * 16} if name == "longrope" else {}
    if name == "power":
        params["k"] = 0.0
    if name == "truncate":
        params["wavelength"] = 1e12
    got, scaling = METHODS[name].compute(BASE, dim, 1.0, L, **params)
    torch.testing.assert_close(got, original, rtol=1e-6, atol=0)
    assert scaling == 1.0


# ---- registry ----------------------------------------------------------------------------------


def test_registry_names_transformers_types_and_typed_defaults():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    assert set(METHODS) == {"linear", "ntk", "dynamic-ntk", "yarn", "llama3", "longrope", "power", "truncate"}
    hf = {m.transformers_rope_type for m in METHODS.values()} - {None}
    assert hf == {"linear", "dynamic", "yarn", "llama3", "longrope"} and hf <= set(ROPE_INIT_FUNCTIONS)
    assert METHODS["power"].transformers_rope_type is None and METHODS["truncate"].transformers_rope_type is None
    for m in METHODS.values():
        assert m.doc and all(p.name and p.type for p in m.params)
    assert METHODS["yarn"].resolve({})["beta_fast"] == 32.0
    with pytest.raises(ValueError, match="unknown parameters"):
        METHODS["linear"].compute(BASE, 16, 2.0, L, beta_fast=3)
    with pytest.raises(ValueError, match="short_factor"):
        METHODS["longrope"].compute(BASE, 16, 2.0, L, short_factor=[1.0], long_factor=[1.0])


def test_length_dependent_methods_are_lcc_rope_variants():
    from lcc.ops.rope import VARIANTS

    dyn = METHODS["dynamic-ntk"].setting(BASE, 16, 2.0, L)
    assert dyn.variant.startswith("dynamic-ntk:") and "dynamic-ntk" in VARIANTS
    lr = METHODS["longrope"].setting(BASE, 16, 4.0, L, short_factor=SHORT, long_factor=LONG)
    assert lr.variant == f"longrope:original={L}" and lr.inv_freq.shape == (16,)  # [short ; long]
    assert METHODS["yarn"].setting(BASE, 16, 4.0, L).variant == ""
