"""The planner: candidates from the registry, memory filtering, ranking, and its reason."""

import json

import pytest

from lcc.cost.planner import candidate_pass_lists, plan, plan_for_compile
from lcc.passes import REGISTRY


def test_candidates_use_only_registered_passes():
    for passes in candidate_pass_lists(131072):
        assert all(p.split(":")[0] in REGISTRY for p in passes)
    assert [] in candidate_pass_lists(131072)
    assert candidate_pass_lists(131072, registry={"flash": None}) == [[], ["flash"]]


def test_exact_plan_on_a_gpu_picks_an_exact_pass_list_and_ranks_by_time(tiny_program):
    _, program = tiny_program
    p = plan(program, program.spec.trained_len, "h100", quality="exact")
    assert p.chosen is not None and p.chosen.risk == "none"
    ok = [c for c in p.candidates if c.fits and c.risk == "none"]
    assert p.chosen is ok[0] and p.chosen.prefill_time == min(c.prefill_time for c in ok)
    assert "fastest" in p.reason
    d = json.loads(json.dumps(p.to_dict()))
    assert set(d["chosen"]) >= {"passes", "memory", "prefill_time", "decode_tokens_per_s", "risk"}


def test_budget_drops_what_does_not_fit_and_says_the_smallest(tiny_program):
    _, program = tiny_program
    roomy = plan(program, 65536, "h100")
    needed = {tuple(c.passes): c.memory for c in roomy.candidates if c.memory}
    tight = plan(program, 65536, "h100", memory_budget=min(needed.values()) - 1, quality="any")
    assert tight.chosen is None
    assert "nothing fits" in tight.reason and "smallest" in tight.reason
    between = sorted(needed.values())[len(needed) // 2]
    mid = plan(program, 65536, "h100", memory_budget=between, quality="any")
    assert mid.chosen is not None and mid.chosen.memory <= between
    assert all(not c.fits for c in mid.candidates if c.memory and c.memory > between)


def test_plan_for_compile_returns_json_and_pass_specs(tiny_program):
    from lcc.passes import parse_pass

    _, program = tiny_program  # lcc compile passes the loaded model; a program is planned the same way
    d, specs = plan_for_compile(program, 1024, "h100")  # 4x: the prior (smollm2 at 32k) has a method that retrieves
    json.dumps(d)
    assert [str(parse_pass(p)) for p in d["passes"]] == [str(s) for s in specs]
    assert d["candidates"] and "reason" in d


def test_unfused_attention_pays_for_its_scores_in_hbm_and_flash_does_not(tiny_program):
    """On a GPU, no passes (algo auto: unfused on the torch/ONNX backends) writes every score to HBM and reads it
    back; flash keeps them on chip.  The floor is first principles: layers * heads * L^2 fp32 scores, twice."""
    from lcc.cost.hardware import load_profile

    loaded, program = tiny_program
    n, spec, h100 = 131072, loaded.spec, load_profile("h100")
    p = plan(program, n, h100, quality="any",
             candidates=[[], ["flash"], ["kv-quant", "flash"]])
    by = {tuple(c.passes): c for c in p.candidates}
    floor = spec.layers * spec.heads * n * n * 4 * 2 / h100.bandwidth
    assert by[()].prefill_time >= floor > by[("flash",)].prefill_time
    assert p.chosen.passes != [] and "no passes" in p.reason and "slower" in p.reason
    # kv-quant: the same attention; quantizing the cache costs about what writing a smaller cache saves,
    # so prefill barely moves; decode reads the smaller cache, so it is faster
    quant = by[("kv-quant", "flash")]
    assert quant.prefill_time == pytest.approx(by[("flash",)].prefill_time, rel=0.05)
    assert quant.decode_tokens_per_s > by[("flash",)].decode_tokens_per_s and quant.memory < by[("flash",)].memory


def test_past_the_trained_length_exact_chooses_nothing_and_says_why(tiny_program):
    _, program = tiny_program
    p = plan(program, 4 * program.spec.trained_len, "h100", quality="exact")
    assert p.chosen is None and "nothing is exact past the trained length" in p.reason


@pytest.mark.parametrize("quality", ["balanced", "retrieval"])
def test_past_the_trained_length_the_choice_carries_a_position_method(tiny_program, quality):
    """Regression (issue 13): a plan past the trained length without a position method is never chosen."""
    from lcc.passes import parse_pass

    _, program = tiny_program
    # balanced needs a retrieval ratio >= 0.9: the prior (smollm2's records) has one up to 4x, none at 8x or 16x
    for factor in (2, 4) if quality == "balanced" else (2, 4, 16):
        p = plan(program, factor * program.spec.trained_len, "h100", quality=quality)
        assert p.chosen is not None
        assert any("positions" in parse_pass(s).definition.slots for s in p.chosen.passes), p.chosen.passes
        assert all(c.positions or c.why_not.startswith("out of range") for c in p.candidates if c.fits
                   and c.error is None and c not in p.candidates[:1])


def test_position_methods_take_their_factor_from_the_target(tiny_program):
    _, program = tiny_program
    lists = candidate_pass_lists(8 * 256, trained_len=256)
    scaled = [p[0] for p in lists if p and p[0].startswith("rope-scaling")]
    assert {s.split(",")[0] for s in scaled} == {"rope-scaling:method=" + m for m in
                                                 ("linear", "ntk", "dynamic-ntk", "yarn")}
    assert all(s.endswith("factor=8") for s in scaled)
    assert ["rerope:window=64"] in lists  # trained / 4
    assert not [p for p in candidate_pass_lists(256, trained_len=256) if p and p[0].startswith("rope-scaling")]


def test_a_model_without_records_gets_a_prior_that_says_how_to_measure_it(tiny_program):
    _, program = tiny_program
    p = plan(program, 4 * program.spec.trained_len, "h100")
    assert p.chosen.estimate.source == "prior"
    assert "prior" in p.reason and "lcc quality tiny-llama --lengths 1k" in p.reason
    rows = plan_for_compile(program, 1024, "h100")[0]
    assert rows["quality_at_target"]["source"] == "prior"
    assert all({"ppl_ratio", "retrieval_ratio", "quality_source"} <= set(r) for r in rows["candidates"])


def test_auto_length_is_the_longest_that_fits_the_budget(tiny_program):
    from lcc.cost.planner import longest_plan

    loaded, program = tiny_program
    # quality retrieval: the budget decides (balanced stops at 4x the trained length: the next test)
    roomy = longest_plan(program, 1 << 20, "h100", quality="retrieval")
    assert roomy.target_len == 1 << 20 and roomy.chosen is not None
    per_token = loaded.spec.layers * 2 * loaded.spec.kv_heads * loaded.spec.head_dim * 4  # fp32 K and V
    budget = 70_000 * per_token  # room for a cache of some 64k tokens, not 128k
    tight = longest_plan(program, 1 << 20, "h100", memory_budget=budget, quality="retrieval")
    assert tight.chosen is not None and tight.chosen.memory <= budget
    assert tight.target_len < 1 << 20 and "longest length" in tight.reason
    bigger = plan(program, 2 * tight.target_len, "h100", memory_budget=budget, quality="retrieval")
    assert bigger.chosen is None


def test_auto_length_at_balanced_is_the_longest_where_something_retrieves(tiny_program):
    """The prior retrieves (ratio >= 0.9) at 4x the trained length and not at 8x: auto stops at 4x."""
    from lcc.cost.planner import longest_plan

    _, program = tiny_program
    auto = longest_plan(program, 1 << 20, "h100")
    assert auto.chosen is not None and auto.target_len == 4 * program.spec.trained_len
    assert auto.chosen.estimate.retrieval_ratio >= 0.9


@pytest.mark.slow
def test_smollm2_at_32k_and_128k_plans_a_position_method_from_its_records(smollm2):
    """docs/rope.md's measurements (shipped as records): at 32k only dynamic-ntk keeps the passkey (1.00), and it
    is measured there (DCA's 16k figures, better but from half the length, wait while a candidate is measured at
    the target). At 64k the best passkey is 4 of 6 (Self-Extend, Leaky ReRoPE) and at 128k every method's is 0:
    `balanced` (retrieval ratio >= 0.9) chooses nothing and says which level would; `retrieval` takes the best
    retrieval measured at the target, then the lowest perplexity ratio."""
    p = plan(smollm2, 32768, "h100")
    assert p.chosen.passes[0] == "rope-scaling:method=dynamic-ntk,factor=4"
    assert p.chosen.estimate.source == "record" and p.chosen.estimate.retrieval_ratio >= 0.9
    assert not p.chosen.estimate.extrapolated and p.chosen.estimate.length == 32768
    for length, best in ((65536, "self-extend:group=16,window=2048"), (131072, "leaky-rerope:window=2048")):
        strict = plan(smollm2, length, "h100")
        assert strict.chosen is None and "none meets quality=balanced" in strict.reason
        assert "--quality retrieval" in strict.reason
        far = plan(smollm2, length, "h100", quality="retrieval")
        assert far.chosen.passes == [best], far.chosen.passes
        assert far.chosen.estimate.source == "record" and not far.chosen.estimate.extrapolated
        assert far.chosen.estimate.length == length
        assert all(c.estimate is not None and c.estimate.detail for c in far.candidates if c.error is None)
    assert far.chosen.estimate.retrieval_ratio == 0 and far.chosen.risk == "high"


def test_a_candidate_resumed_from_its_shorter_candidate_costs_what_a_fresh_one_does(tiny_program):
    """The planner prices [X, Y] by running only Y on [X]'s program: the same program as running both."""
    from lcc.cost.hardware import load_profile
    from lcc.cost.model import program_cost
    from lcc.passes import apply_passes

    _, program = tiny_program
    window, both = "sliding-window:window=64,sinks=4", ["sliding-window:window=64,sinks=4", "flash"]
    head = apply_passes(program, [window])
    resumed, fresh = apply_passes(program, both, done=head), apply_passes(program, both)
    assert resumed.passes == fresh.passes and resumed.stage == fresh.stage
    h100 = load_profile("h100")
    assert program_cost(resumed, "cuda").evaluate(4096, h100) == program_cost(fresh, "cuda").evaluate(4096, h100)
    with pytest.raises(ValueError, match="are not a start of"):
        apply_passes(program, ["flash"], done=head)
