"""Program costs: the formulas against counts read off the model and the graph (the oracles)."""

import sympy
import torch

from lcc.cost.model import program_cost
from lcc.cost.symbols import C, L, at, substitute


def _linear_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_linear_flops_are_2_params_per_token_plus_lm_head_once(tiny_program):
    loaded, program = tiny_program
    pc = program_cost(program, "cpu")
    linear = sympy.Add(*(k.flops for n in pc.prefill.nodes if n.op == "aten.linear" for k in n.kernels))
    head = loaded.model.lm_head.weight
    body = sum(w.numel() for w in _linear_weights(loaded.model) if w is not head)
    # every token goes through every decoder matmul; only the last token reaches lm_head (logits_to_keep=1)
    assert sympy.expand(linear - (2 * body * L + 2 * head.numel())) == 0


def test_flash_attention_flops_count_causal_pairs_on_cuda(tiny_program):
    from lcc.passes import apply_passes

    loaded, program = tiny_program
    spec = loaded.spec
    pc = program_cost(apply_passes(program, ["flash"]), "cuda")
    attn = sympy.Add(*(n.flops for n in pc.prefill.nodes if n.op == "lcc.attention"))
    pairs = L * L - L * (L - 1) / 2
    want = spec.layers * spec.heads * 4 * spec.head_dim * pairs
    assert sympy.expand(substitute(attn) - want) == 0


def test_prefill_flops_are_quadratic_and_decode_linear(tiny_program):
    _, program = tiny_program
    pc = program_cost(program, "cpu")
    assert {k: e.unpriced for k, e in pc.entries.items()} == {"prefill": [], "decode": []}
    f = pc.formulas()
    assert sympy.degree(f["prefill_flops"], L) == 2
    assert sympy.degree(f["decode_flops"], L) == 1


def test_kv_cache_formula_equals_layout_bytes_at_captured_capacity(tiny_program):
    _, program = tiny_program
    pc = program_cost(program, "cpu")
    assert at(pc.kv_cache(), 1, 1, program.cache.capacity) == program.cache.bytes()
    spec = program.spec
    assert sympy.expand(pc.kv_cache() - 2 * spec.layers * spec.kv_heads * spec.head_dim * 4 * C) == 0


def test_cache_layouts_of_other_passes_plug_in(tiny_program):
    from lcc.passes import REGISTRY, apply_passes

    _, program = tiny_program
    for text in ("kv-quant:group=16", "kv-sink-cache:sinks=4,window=64"):
        if text.split(":")[0] not in REGISTRY:
            continue
        rewritten = apply_passes(program, [text])
        pc = program_cost(rewritten, "cpu")
        assert at(pc.kv_cache(), 1, 1, rewritten.cache.capacity) == rewritten.cache.bytes()
        assert not any(e.unpriced for e in pc.entries.values())


def test_a_cache_layout_is_priced_the_same_whatever_the_capacity_it_was_captured_at(tiny_program):
    """The capacity is symbolic, so a program captured for 256 tokens prices every length as the one captured
    for 128 does.  Regressions: kv-quant's per-channel key statistics (ceil(C / group) rows) stayed at the
    captured size, and a sink + ring cache of 4 + 252 = 256 slots was taken for the capacity and grew with it."""
    from lcc.capture import capture
    from lcc.passes import apply_passes, canonicalize

    loaded, small = tiny_program
    big = canonicalize(capture(loaded, 256, entries=("prefill", "decode")))
    for passes in (["kv-quant"], ["kv-sink-cache:sinks=4,window=252"]):
        costs = [program_cost(apply_passes(p, passes), "cpu") for p in (small, big)]
        for n in (4096, 32768):
            a, b = (pc.evaluate(n) for pc in costs)
            assert (a.memory, a.kv_cache, a.activations, a.decode_memory) == \
                (b.memory, b.kv_cache, b.activations, b.decode_memory), (passes, n)
    ring = program_cost(apply_passes(big, ["kv-sink-cache:sinks=4,window=252"]), "cpu")
    assert ring.evaluate(4096).decode_memory == ring.evaluate(32768).decode_memory  # a ring does not grow


def test_weights_counted_once_even_when_tied(tiny_program):
    loaded, program = tiny_program
    # parameters (a tied lm_head shares the embedding's storage) plus the one buffer the graph reads
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in loaded.model.parameters()}
    inv_freq = loaded.model.model.rotary_emb.inv_freq
    assert program_cost(program, "cpu").weights == sum(storages.values()) + inv_freq.numel() * 4


def test_every_family_is_fully_priced(tiny):
    from lcc.capture import capture
    from lcc.passes import canonicalize

    for family in ("mistral", "qwen2", "qwen3", "phi3", "gpt-neox"):  # llama: the fixture, both entries
        program = canonicalize(capture(tiny(family), 64, entries=("prefill",)))
        pc = program_cost(program, "cpu")
        assert {k: e.unpriced for k, e in pc.entries.items()} == {"prefill": []}, family
        assert pc.evaluate(4096).prefill_flops > 0
