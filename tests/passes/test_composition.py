"""Pass composition: declared slots, composes-with and ordering refuse conflicting lists up front, in one line;
numbers out of range are refused; a toy pass registered here shows in ``lcc passes`` and runs in ``lcc diff``."""

import json

import pytest

from lcc.errors import UsageError
from lcc.passes import REGISTRY, SLOTS, PassResult, apply_passes, check_passes, parse_pass, register
from lcc.spec import SpecError


@pytest.mark.parametrize("passes,names", [
    (["rerope", "rope-scaling"], ("rerope", "rope-scaling")),
    (["rerope", "leaky-rerope"], ("rerope", "leaky-rerope")),
    (["rerope", "attention-chunked"], ("rerope", "attention-chunked")),
    (["rope-scaling", "rope-scaling:method=linear"], ("rope-scaling", "rope-scaling")),
    (["kv-quant", "kv-sink-cache"], ("kv-quant", "kv-sink-cache")),
    (["linear-attention", "flash"], ("linear-attention", "flash")),
    (["memory-tokens", "flash"], ("memory-tokens", "flash")),
    (["rerope", "sliding-window"], ("rerope", "sliding-window")),
])
def test_conflicting_lists_are_refused_in_one_line_naming_both(passes, names):
    with pytest.raises(UsageError) as e:
        check_passes(passes)
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in names)


@pytest.mark.parametrize("passes", [
    ["sliding-window:window=8,sinks=2", "flash"], ["flash", "sliding-window"], ["flash:layers=0", "flash:layers=1"],
    ["rope-scaling:method=linear", "rerope"], ["sliding-window", "rerope"], ["kv-quant", "flash"],
    ["rope-scaling:method=linear", "kv-sink-cache"], ["block-sparse", "attention-chunked"],
])
def test_composing_lists_pass_the_check(passes):
    assert [s.name for s in check_passes(passes)] == [p.partition(":")[0] for p in passes]


@pytest.mark.parametrize("text", [
    "rope-scaling:factor=nan", "rope-scaling:factor=inf", "rope-scaling:factor=-1", "attention-chunked:chunk=0",
    "attention-chunked:chunk=-8", "linear-attention:features=0", "sliding-window:window=0", "sliding-window:sinks=-1",
    "rerope:window=0", "leaky-rerope:factor=0.5", "kv-sink-cache:window=0", "kv-quant:group=0",
    "memory-tokens:count=0", "block-sparse:block=0",
])
def test_out_of_range_numbers_are_refused(text):
    with pytest.raises(SpecError) as e:
        parse_pass(text)
    assert "\n" not in str(e.value) and text.split(":")[1].split("=")[0] in str(e.value)


def test_every_numeric_parameter_is_bounded_and_every_pass_declares_slots():
    for d in REGISTRY.values():
        assert d.slots and d.slots <= set(SLOTS), d.name
        for p in d.params:
            if p.type in (int, float) and not p.choices:
                assert p.low is not None and p.high is not None, (d.name, p.name)
                assert p.low <= p.default <= p.high, (d.name, p.name)


def test_planner_candidates_are_what_the_declarations_say():
    from lcc.cost.planner import candidate_pass_lists

    lists = candidate_pass_lists(32768, trained_len=8192)
    planned = {n for n, d in REGISTRY.items() if d.plan is not None and d.plan(32768, 8192)}
    assert {lst[0].partition(":")[0] for lst in lists if lst} == planned
    assert "memory-tokens" not in planned and "flash" in planned
    for lst in lists:
        check_passes(lst)  # every candidate composes
    expected = [[]]
    for n, d in REGISTRY.items():
        for args in (d.plan(32768, 8192) if d.plan else []):
            spec = f"{n}:{args}" if args else n
            expected.append([spec])
            for other in d.plan_with:
                a, b = REGISTRY[n], REGISTRY[other.partition(":")[0]]
                if (not (a.slots & b.slots) or a.composes_with(b)) and a.name not in b.before:
                    expected.append([spec, other])
    assert lists == expected
    assert ["rerope", "flash"] not in lists and ["kv-quant", "flash"] in lists


@pytest.fixture
def toy():
    """A pass registered from this file: it copies the graphs (exact, changes nothing numerically)."""

    @register("toy-identity", exact=True, slots=("distribution",), plan=None,
              doc="test-only pass: copies the graphs")
    def toy_identity(program):
        return PassResult(program.with_entries(program.copy_graphs()), True)

    yield "toy-identity"
    del REGISTRY["toy-identity"]


def test_a_toy_pass_shows_in_lcc_passes_and_runs_in_diff(toy):
    from typer.testing import CliRunner

    import lcc.cli
    from lcc.diff import diff
    from lcc.models import load_model

    out = CliRunner().invoke(lcc.cli.app, ["passes", "--json"])
    assert out.exit_code == 0, out.output
    assert toy in json.dumps(json.loads(out.output))
    reports = diff(load_model("tiny-llama"), [toy], length=16)
    stage = next(r for r in reports if r.name == toy)
    assert stage.ok and stage.vs_prev_max_abs == 0.0  # the toy copies the graphs: the same logits as the canonical stage


def test_a_failing_pass_is_reraised_with_the_stages_before_it(toy):
    from lcc.capture.export import capture
    from lcc.models import load_model
    from lcc.passes import canonicalize

    program = canonicalize(capture(load_model("tiny-mistral"), capacity=64, entries=("decode",)))
    with pytest.raises(UsageError) as e:
        apply_passes(program, [toy, "kv-sink-cache:sinks=4,window=16"])
    assert "full causal attention only" in str(e.value) and "after toy-identity" in str(e.value)
