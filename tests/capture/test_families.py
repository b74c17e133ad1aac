"""The families accepted by capability (issue 18): Gemma 2 / Gemma 3 (local and global layers, per-layer RoPE,
soft-capping, query scaling, q/k norms, scaled embedding, tied output), OLMo 2 and Granite (multipliers), each
captured and canonical against HF eager (fp32) and generating its greedy tokens; a model whose attention bypasses
transformers' AttentionInterface is refused in one line."""

import pytest
import torch

from lcc.capture.export import capture
from lcc.diff import LOGIT_TOL, hf_eager, hf_outputs, logit_limit, program_outputs
from lcc.errors import UsageError
from lcc.models import load_model
from lcc.passes import canonicalize
from lcc.passes.graph import ATTENTION, ROPE, get_arg, lcc_nodes
from lcc.runtime import generate_ids

# olmo2 and granite show the generic path; gemma2 and gemma3 are the point and run in every suite
NEW_FAMILIES = ["gemma2", "gemma3", pytest.param("olmo2", marks=pytest.mark.slow),
                pytest.param("granite", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def canonical(tiny):
    """``get(family)`` -> the canonical program of ``tiny-<family>`` (prefill_full, prefill, decode; 64 positions)."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = canonicalize(capture(tiny(family), capacity=64,
                                                 entries=("prefill_full", "prefill", "decode")))
        return cache[family]

    return get


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_canonical_program_matches_hf_eager_and_generates_its_tokens(family, tiny, canonical):
    """50 tokens (past the 16-token local windows) against HF eager; then 30 greedy decode steps after a
    20-token prompt, so Gemma's local layers decode past their window (over a full cache of 64 positions)."""
    loaded = tiny(family)
    program = canonical(family)
    gm = program.entries["prefill_full"]
    assert len(lcc_nodes(gm, ATTENTION)) == loaded.spec.layers
    assert len(lcc_nodes(gm, ROPE)) == 2 * loaded.spec.layers
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(1))
    ref, got = hf_outputs(loaded, ids), program_outputs(program, ids)
    assert float((ref.logits - got.logits).abs().max()) <= logit_limit(ref.logits)
    assert float((ref.hidden - got.hidden).abs().max()) <= LOGIT_TOL * max(1.0, float(ref.hidden.abs().max()))
    prompt = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    with hf_eager(loaded.model) as model:
        want = model.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None,
                              pad_token_id=0, min_new_tokens=30)[0, 20:].tolist()
    assert generate_ids(program, prompt, 30) == want


def test_gemma_layers_keep_their_own_window_cap_and_rope(tiny, canonical):
    """Each attention node carries its layer's window and Gemma 2's attention soft-cap; each Gemma 3 rope node
    reads its layer kind's inverse frequencies (local base 10k, global base 1M with linear x8), as transformers'
    rotary embedding computes them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    gm = canonical("gemma2").entries["prefill"]
    attn = sorted(lcc_nodes(gm, ATTENTION), key=lambda n: n.meta["lcc_layer"])
    assert [get_arg(n, "mask") for n in attn] == ["sliding:window=16,sinks=0", "causal"]
    assert [get_arg(n, "softcap") for n in attn] == [2.0, 2.0]
    assert [get_arg(n, "scale") for n in attn] == [24 ** -0.5] * 2  # query_pre_attn_scalar, not head_dim

    g3 = tiny("gemma3")
    gm = canonical("gemma3").entries["prefill"]
    config = g3.model.config
    for node in lcc_nodes(gm, ROPE):
        layer_type = config.layer_types[node.meta["lcc_layer"]]
        inv_freq = gm
        for part in get_arg(node, "inv_freq").target.split("."):
            inv_freq = getattr(inv_freq, part)
        init = ROPE_INIT_FUNCTIONS["linear"] if layer_type == "full_attention" else None
        want = (init(config, layer_type=layer_type)[0] if init else
                type(g3.model.model.rotary_emb).compute_default_rope_parameters(config, layer_type=layer_type)[0])
        torch.testing.assert_close(inv_freq, want, rtol=0, atol=0)
    assert [get_arg(n, "softcap") for n in lcc_nodes(gm, ATTENTION)] == [0.0] * 3


def test_spec_shows_rotary_per_layer_kind(tiny):
    spec = tiny("gemma3").spec
    assert spec.attention == ("sliding:16", "sliding:16", "full")
    kinds = spec.to_dict()["rotary_by_kind"]
    assert kinds["sliding:16"]["theta"] == 10000.0 and kinds["sliding:16"]["scaling"] == {}
    assert kinds["full"]["theta"] == 1000000.0 and kinds["full"]["scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert spec.rotary == spec.rotary_of(2)  # the global layers'
    assert spec.trained_len == tiny("gemma3").model.config.max_position_embeddings


def _bypass_layer(model, layer: int):
    """Layer ``layer``'s attention calls transformers' eager attention directly, not through the interface."""
    from transformers.models.llama import modeling_llama as ml

    attn = model.model.layers[layer].self_attn

    def forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, attn.head_dim)
        q = attn.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = attn.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = attn.v_proj(hidden_states).view(shape).transpose(1, 2)
        q, k = ml.apply_rotary_pos_emb(q, k, *position_embeddings)
        out, weights = ml.eager_attention_forward(attn, q, k, v, None, scaling=attn.scaling)
        return attn.o_proj(out.reshape(*hidden_states.shape[:-1], -1)), weights

    attn.forward = forward


def test_attention_that_bypasses_the_interface_is_refused_in_one_line():
    loaded = load_model("tiny-llama")  # its own copy: one layer is patched
    _bypass_layer(loaded.model, 1)
    with pytest.raises(UsageError) as e:
        capture(loaded, capacity=16, entries=("prefill",))
    assert str(e.value) == ("layer 1: attention did not go through transformers' AttentionInterface, which lcc "
                            "capture needs: this model is not supported")


def test_a_family_without_the_attention_interface_exits_2_in_one_line(tmp_path, capsys):
    """StableLM has rotary embeddings but its attention classes predate the interface: refused by the CLI,
    exit 2, one line naming what was not recognised (before any weights are read)."""
    from transformers import StableLmConfig

    StableLmConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2).save_pretrained(tmp_path)
    from lcc.cli import main

    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "stablelm is not supported: its attention (StableLmForCausalLM) does not go through transformers' " \
           "AttentionInterface" in err


@pytest.mark.slow
@pytest.mark.parametrize("family,backend", [("gemma2", "onnx"), ("gemma3", "onnx"), ("gemma3", "torch")])
def test_compiled_gemma_decodes_hf_eager_tokens_past_its_local_window(family, backend, tiny, tmp_path):
    """The compiled artifact (its own lowered check passed) greedy-decodes HF eager's 30 tokens after a 20-token
    prompt, past the 16-token local window; the ONNX artifact of Gemma 2 runs its soft-capped attention as the
    op's reference (recorded), Gemma 3's has no fallback."""
    from lcc.capture.program import CacheLayout
    from lcc.compile import compile_model, load_artifact
    from lcc.passes import parse_pass

    loaded = tiny(family)
    result = compile_model(loaded, 64, backend, [parse_pass("flash")], tmp_path / "out")
    assert result.report["lowered"]["ok"]
    manifest, runnable, _ = load_artifact(result.out)
    if backend == "onnx":
        assert bool(manifest.lowering["fallbacks"]) == (family == "gemma2")
    prompt = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    with hf_eager(loaded.model) as model:
        want = model.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None,
                              pad_token_id=0, min_new_tokens=30)[0, 20:].tolist()
    assert generate_ids(runnable, prompt, 30, cache_layout=CacheLayout.from_dict(manifest.cache)) == want
