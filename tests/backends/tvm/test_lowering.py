"""TVM (llvm) lowering against the canonical program it came from: logits, caches, tokens, fallbacks."""

import pytest
import torch

from lcc.runtime import generate_ids

pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'apache-tvm>=0.20'")


def _max_err(want, got) -> float:
    return max(float((w - g).abs().max()) for w, g in zip(want, got, strict=True))


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt-neox"])  # GQA, sliding window 24, partial rotary
def test_prefill_and_decode_match_canonical_program(family, lowered):
    program, tvm_program = lowered(family)
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(1))  # longer than the window
    for n in (2, 50):  # the dynamic sequence length at both ends of what we use
        cache = program.cache.empty()
        want = program.entries["prefill"](ids[:, :n], *cache)
        got = tvm_program.entries["prefill"](ids[:, :n], *cache)
        assert _max_err(want, got) <= 1e-4
    step = (ids[:, :1], torch.tensor(50), *want[1:])  # decode at a position past the window
    assert _max_err(program.entries["decode"](*step), tvm_program.entries["decode"](*step)) <= 1e-4


def test_greedy_generation_matches_canonical_program(lowered):
    program, tvm_program = lowered("mistral")
    prompt = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    assert tvm_program.generate(prompt, 30) == generate_ids(program, prompt, 30)


def test_library_reloads_without_recompiling(lowered, monkeypatch):
    import tvm

    from lcc.backends.tvm import TvmProgram

    program, built = lowered("llama")
    monkeypatch.setattr(tvm, "compile", lambda *a, **k: pytest.fail("loading recompiled the program"))
    monkeypatch.setattr(tvm.relax, "build", lambda *a, **k: pytest.fail("loading recompiled the program"))
    again = TvmProgram(built.out_dir)
    assert again.manifest["fallbacks"] == [] and set(again.manifest["native"]) >= {"attention", "rope"}
    ids = torch.randint(0, 256, (1, 9))
    assert _max_err(built.entries["prefill"](ids, *program.cache.empty()),
                    again.entries["prefill"](ids, *program.cache.empty())) == 0.0


def test_mask_without_portable_predicate_runs_as_reference_and_is_reported(tiny, tmp_path):
    from lcc.backends.tvm import TvmProgram, lower
    from lcc.capture.export import capture
    from lcc.ops.masks import MaskKind, register_mask
    from lcc.passes import canonicalize
    from lcc.passes.graph import ATTENTION, lcc_nodes, set_args

    # causal, plus every even key: a predicate written with torch calls, so TVM has no Relax form of it
    register_mask(MaskKind("test-even-keys", lambda q, kv: (kv <= q) & torch.eq(kv % 2, 0) | (kv == q), portable=False))
    program = canonicalize(capture(tiny("llama"), capacity=32))
    for gm in program.entries.values():
        for node in lcc_nodes(gm, ATTENTION):
            set_args(node, mask="test-even-keys")
        gm.recompile()
    manifest = lower(program, tmp_path)
    assert {(f["op"], f["entry"], f["as"]) for f in manifest["fallbacks"]} == {
        ("attention", "prefill", "reference"), ("attention", "decode", "reference")}
    assert len(manifest["fallbacks"]) == 2 * program.spec.layers
    tvm_program = TvmProgram(tmp_path)
    ids = torch.randint(0, 256, (1, 20))
    want = program.entries["prefill"](ids, *program.cache.empty())
    assert _max_err(want, tvm_program.entries["prefill"](ids, *program.cache.empty())) <= 1e-4
    step = (ids[:, :1], torch.tensor(20), *want[1:])
    assert _max_err(program.entries["decode"](*step), tvm_program.entries["decode"](*step)) <= 1e-4


@pytest.mark.parametrize("rope", [
    "method=dynamic-ntk,factor=4,original=16",
    "method=longrope,factor=4,original=16,short_factor=1|1|1|1|1|1|1|1,long_factor=1|2|3|4|5|6|7|8",
])
def test_length_dependent_rope_variants_match_below_and_beyond_original(rope, tiny, tmp_path):
    from lcc.backends.tvm import TvmProgram, lower
    from lcc.capture.export import capture
    from lcc.passes import apply_passes, canonicalize, parse_pass

    program = apply_passes(canonicalize(capture(tiny("llama"), capacity=64)), [parse_pass(f"rope-scaling:{rope}")])
    assert lower(program, tmp_path)["fallbacks"] == []
    tvm_program = TvmProgram(tmp_path)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    for n in (10, 40):  # the variant's rule switches at 16 positions
        want = program.entries["prefill"](ids[:, :n], *program.cache.empty())
        assert _max_err(want, tvm_program.entries["prefill"](ids[:, :n], *program.cache.empty())) <= 1e-4
        step = (ids[:, :1], torch.tensor(n), *want[1:])
        assert _max_err(program.entries["decode"](*step), tvm_program.entries["decode"](*step)) <= 1e-4
