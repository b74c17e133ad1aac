"""RULER's niah and vt: prompts of the exact length whose needles, read back from the text by regexes,
give the expected answers; RULER's string_match_all scoring; seeded trials; bad task strings exit 2."""

import random
import re

import pytest

from lcc.eval.ruler import Haystack, build_niah, build_vt, string_match_all

# Real sentences of uneven length (the filler repeats them when the prompt is longer).
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness. Call me Ishmael. Some years ago, never mind how long precisely, having little or no money "
        "in my purse, I thought I would sail about a little. Happy families are all alike; every unhappy family "
        "is unhappy in its own way. The sun shone, having no alternative, on the nothing new. Whether I shall "
        "turn out to be the hero of my own life, or whether that station will be held by anybody else, these "
        "pages must show. In my younger and more vulnerable years my father gave me some advice. All this "
        "happened, more or less. It was a bright cold day in April, and the clocks were striking thirteen! "
        "Who is there? Nobody, said the voice.")
NEEDLE_RE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")
ASSIGN_RE = re.compile(r"VAR ([A-Z]{5}) = (?:VAR ([A-Z]{5})|(\d{5}))\.")


def _depths_from_text(text: str, pattern, head_end: str, tail_start: str) -> list[float]:
    """Where each inserted line sits in the filler, measured on the text: filler characters before it over
    all filler characters (the other inserted lines not counted)."""
    body = text[text.index(head_end) + len(head_end):text.rindex(tail_start)]
    spans = [m.span() for m in pattern.finditer(body)]
    inserted = sum(b - a + 1 for a, b in spans)  # each line came with one leading space
    total = len(body) - inserted
    out, removed = [], 0
    for a, b in spans:
        out.append((a - 1 - removed) / total)
        removed += b - a + 1
    return out


def _niah_oracle(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """key -> values as planted, and the keys the question asks for, read from the prompt text."""
    planted: dict[str, list[str]] = {}
    for key, value in NEEDLE_RE.findall(text):
        planted.setdefault(key, []).append(value)
    query = re.search(r"What (?:are all|is) the special magic numbers? for (.+?) mentioned", text).group(1)
    return planted, [q for q in re.split(r",\s*(?:and\s+)?", query) if q]


@pytest.mark.parametrize("needles,keys,values,queries", [(1, 1, 1, 1), (4, 4, 1, 1), (4, 1, 4, 1), (4, 4, 1, 4),
                                                         (6, 2, 2, 2)])
def test_a_niah_prompt_has_the_exact_length_and_its_text_gives_the_expected_answers(tiny, needles, keys, values,
                                                                                     queries):
    tok = tiny("llama").tokenizer  # one token per character: token depths are character depths
    haystack = Haystack(tok, TEXT)
    for seed in range(3):
        trial = build_niah(tok, haystack, 2048, seed, needles, keys, values, queries)
        assert len(trial.ids) + trial.new_tokens == 2048
        text = tok.decode(trial.ids)
        planted, asked = _niah_oracle(text)
        assert sum(map(len, planted.values())) == needles and len(asked) == queries
        assert sum(len(v) == values for v in planted.values()) >= keys
        assert len(planted) == keys + needles - keys * values  # distractor needles carry keys of their own
        assert sorted(trial.expected) == sorted(v for k in asked for v in planted[k])
        assert all(len(planted[k]) == values for k in asked)
        assert [m.group(0) for m in NEEDLE_RE.finditer(text)] == list(trial.lines)
        measured = _depths_from_text(text, NEEDLE_RE, "afterwards.\n", "\nWhat ")
        assert measured == pytest.approx(list(trial.depths), abs=1e-9)
        single = queries * values == 1
        assert text.startswith("A special magic number is hidden" if single else "Some special magic numbers are")
        assert text.endswith("mentioned in the provided text " + ("is" if single else "are"))


def test_niah_needles_are_spread_over_the_filler_by_seed(tiny):
    tok = tiny("llama").tokenizer
    haystack = Haystack(tok, TEXT)
    depths = [d for seed in range(20) for d in build_niah(tok, haystack, 1024, seed, needles=2, keys=2).depths]
    assert min(depths) < 0.15 and max(depths) > 0.85 and len(set(depths)) > 20


def _vt_oracle(text: str) -> tuple[set[str], list[str]]:
    """Names assigned the queried value, following the chains as written; asserts each source comes first."""
    value_of: dict[str, str] = {}
    for name, source, number in ASSIGN_RE.findall(text):
        assert source == "" or source in value_of  # a chain is written in order
        value_of[name] = number or value_of[source]
    query = re.search(r"assigned the value (\d{5}) in the text above", text).group(1)
    return {n for n, v in value_of.items() if v == query}, list(value_of)


@pytest.mark.parametrize("chains,hops", [(1, 4), (3, 2), (2, 6)])
def test_a_vt_prompt_has_the_exact_length_and_its_chains_give_the_expected_names(tiny, chains, hops):
    tok = tiny("llama").tokenizer
    haystack = Haystack(tok, TEXT)
    for seed in range(3):
        trial = build_vt(tok, haystack, 2048, seed, chains, hops)
        assert len(trial.ids) + trial.new_tokens == 2048
        text = tok.decode(trial.ids)
        answer, names = _vt_oracle(text)
        assert len(names) == len(set(names)) == chains * (hops + 1)
        assert set(trial.expected) == answer and len(answer) == hops + 1
        assert f"{hops + 1} variables are assigned the value" in text
        assert [m.group(0) for m in ASSIGN_RE.finditer(text)] == list(trial.lines)
        measured = _depths_from_text(text, ASSIGN_RE, "following text.\n\n", "\nQuestion: ")
        assert measured == pytest.approx(list(trial.depths), abs=1e-9)


def test_prompts_fill_the_length_with_a_bpe_tokenizer_and_leave_room_for_every_answer(smollm2):
    tok = smollm2.tokenizer
    haystack = Haystack(tok, TEXT)
    for length in (1000, 1500):
        for trial in (build_niah(tok, haystack, length, 0, 4, 4, 1, 4), build_vt(tok, haystack, length, 1)):
            assert len(trial.ids) + trial.new_tokens == length
            answer = tok(" " + ", ".join(trial.expected) + ".", add_special_tokens=False)["input_ids"]
            assert trial.new_tokens >= len(answer)
            planted = NEEDLE_RE.findall(tok.decode(trial.ids)) or ASSIGN_RE.findall(tok.decode(trial.ids))
            assert len(planted) in (4, 5)


def test_trials_are_seeded(tiny):
    tok = tiny("llama").tokenizer
    a, b, c = (build_niah(tok, Haystack(tok, TEXT), 1024, s, 4, 2, 2, 1) for s in (7, 7, 8))
    assert a == b and a.ids != c.ids and a.expected != c.expected
    a, b, c = (build_vt(tok, Haystack(tok, TEXT), 1024, s, 2, 3) for s in (7, 7, 8))
    assert a == b and a.ids != c.ids


def test_a_prompt_too_short_for_its_needles_is_a_usage_error(tiny):
    from lcc.errors import UsageError

    tok = tiny("llama").tokenizer
    with pytest.raises(UsageError, match="niah trial needs at least"):
        build_niah(tok, Haystack(tok, TEXT), 300, 0, needles=8)


def test_string_match_all_scores_the_fraction_of_expected_strings_found():
    """RULER's string_match_all (scripts/eval/synthetic/constants.py), per trial."""
    expected = ["1234567", "7654321", "5550123", "9990001"]
    assert string_match_all(" 1234567, 7654321, 5550123 and 9990001.", expected) == 1.0
    assert string_match_all(" 9990001 then 1234567", expected) == 0.5
    assert string_match_all(" 123456, 765432", expected) == 0.0
    assert string_match_all(" abcde, Fghij", ["ABCDE", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    rng = random.Random(0)
    for _ in range(20):  # any subset of the values, in any order, scores its share
        found = rng.sample(expected, rng.randint(0, 4))
        assert string_match_all(" and ".join(found), expected) == len(found) / 4


@pytest.mark.parametrize("task,message", [
    ("niah:needles=0", "needles=0 is out of range"),
    ("niah:values=0", "values=0 is out of range"),
    ("niah:keys=2", "needles=1 cannot hold keys=2"),
    ("niah:needles=4,keys=2,queries=3", "queries=3 is more than keys=2"),
    ("niah:needles=4,queries=2", "queries=2 is more than keys=1"),
    ("niah:depth=3", "unknown parameter 'depth=3'"),
    ("vt:hops=0", "hops=0 is out of range"),
    ("vt:chains=0", "chains=0 is out of range"),
    ("vt:chains=two", "chains='two' is not a valid integer"),
    ("ppl:last=-1", "last=-1 is out of range"),
    ("haystack", "unknown task 'haystack'"),
])
def test_bad_task_strings_exit_2_with_one_line(capsys, task, message):
    from lcc.cli import main

    assert main(["eval", "tiny-llama", "--task", task, "--lengths", "512"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
