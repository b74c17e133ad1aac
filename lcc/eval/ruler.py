"""RULER's needle-in-a-haystack and variable-tracking tasks (Hsieh et al. 2024, "RULER: What's the Real
Context Size of Your Long-Context Language Models?"), generated locally from seeds.

``niah``: needles "One of the special magic numbers for {key} is: {value}." (keys adjective-noun
words, values 7-digit numbers) at seeded depths of real filler text, then the question and
RULER's answer prefix.  ``vt``: chains "VAR {A} = {5-digit value}.", "VAR {B} = VAR {A}." ...
(names of 5 capital letters) interleaved at seeded depths; the question asks for every name
assigned the first chain's value.  Templates are RULER's base templates (``scripts/data/
synthetic/constants.py``), the answer prefix appended as its predictions do, without the
trailing space of vt's (a lone space token is not how BPE text continues).  Filler is the
text's sentences from its start, repeated if short (RULER's essay haystack).  A trial at
length L prompts with L - answer_tokens tokens, so prompt and answer fill L exactly.
Scoring is RULER's ``string_match_all``: the fraction of expected strings found in the output.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

import torch

from lcc.errors import UsageError

NIAH_HEAD = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the numbers afterwards.\n")
NIAH_TAIL = ("\nWhat are all the special magic numbers for {query} mentioned in the provided text? "
             "The special magic numbers for {query} mentioned in the provided text are")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_TAIL = ("\nQuestion: Find all variables that are assigned the value {query} in the text above. "
           "Answer: According to the chain(s) of variable assignment in the text above, {count} variables "
           "are assigned the value {query}, they are:")
TOKENS_PER_ANSWER = 10  # " 1234567," is 9 tokens with digit-splitting tokenizers (Llama, SmolLM2)
ANSWER_SLACK = 8
GRID = [i / 39 for i in range(40)]  # RULER's 40 insertion depths, sampled without replacement

ADJECTIVES = ("amber", "ancient", "bitter", "brave", "bright", "calm", "clever", "crimson", "curious", "damp",
              "eager", "faint", "fierce", "fragile", "gentle", "golden", "hollow", "humble", "icy", "jolly",
              "keen", "lively", "lucky", "mellow", "misty", "narrow", "noisy", "odd", "pale", "polite", "proud",
              "quiet", "rapid", "rusty", "shiny", "silent", "sleepy", "smooth", "sturdy", "swift", "tame",
              "tidy", "vivid", "wary", "wicked", "witty", "young", "zesty")
NOUNS = ("anchor", "badger", "banjo", "basket", "beacon", "bicycle", "blanket", "button", "candle", "canyon",
         "carpet", "compass", "cookie", "crayon", "dolphin", "engine", "falcon", "feather", "garden", "glacier",
         "hammer", "harbor", "helmet", "jacket", "kettle", "ladder", "lantern", "magnet", "meadow", "mitten",
         "napkin", "orchid", "pebble", "pepper", "pillow", "pocket", "puzzle", "rocket", "saddle", "shovel",
         "spoon", "teapot", "ticket", "tunnel", "violin", "wagon", "walrus", "whistle")


def answer_tokens(answers: int) -> int:
    """Tokens generated for a trial with ``answers`` expected strings."""
    return TOKENS_PER_ANSWER * answers + ANSWER_SLACK


@dataclass(frozen=True)
class Trial:
    """One prompt: token ids, the strings the answer must contain, and each inserted line's depth."""

    ids: list[int]
    expected: tuple[str, ...]
    depths: tuple[float, ...]  # in [0, 1] of the filler, one per inserted line, in prompt order
    lines: tuple[str, ...]  # the inserted lines (needles or assignments), in prompt order
    new_tokens: int


class Haystack:
    """Filler token ids from real text, sentence by sentence; encoded once, shared by every trial."""

    def __init__(self, tokenizer, text: str, batch: int = 512):
        self.encode = lambda xs: tokenizer(xs, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]
        if not self.sentences:
            raise UsageError("the filler text is empty: give a --text file with some sentences")
        self.batch, self.next, self.ids, self.bounds = batch, 0, [], [0]

    def take(self, room: int) -> tuple[list[int], list[int]]:
        """``room`` filler tokens and the sentence boundaries inside them (the text repeats if short)."""
        while len(self.ids) < room:
            chunk = [" " + self.sentences[(self.next + i) % len(self.sentences)] for i in range(self.batch)]
            for ids in self.encode(chunk):
                self.ids += ids
                self.bounds.append(len(self.ids))
            self.next += self.batch
        return self.ids[:room], [b for b in self.bounds if b <= room]


def assemble(tokenizer, haystack: Haystack, length: int, head: str, lines: list[str], depths: list[float],
             tail: str, task: str, new: int) -> tuple[list[int], tuple[float, ...]]:
    """``head``, filler with ``lines`` inserted at the sentence boundaries nearest ``depths`` (sorted), ``tail``:
    exactly ``length`` tokens, ``new`` fewer than the trial's.  Returns the ids and each line's realised depth."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head_ids, tail_ids, line_ids = enc(head), enc(tail), [enc(" " + x) for x in lines]
    room = length - len(head_ids) - len(tail_ids) - sum(map(len, line_ids))
    if room < 0:
        raise UsageError(f"a {task} trial needs at least {length - room + new} tokens with this tokenizer ({new} "
                         f"for the answer); asked for {length + new}: give longer --lengths or fewer needles")
    pad, bounds = haystack.take(room)
    ids, done, realised = list(head_ids), 0, []
    for depth, one in zip(depths, line_ids):
        cut = max(done, min(bounds, key=lambda b: abs(b - depth * room)))
        ids += pad[done:cut] + one
        done = cut
        realised.append(cut / room if room else 0.0)
    ids += pad[done:] + tail_ids
    return ids, tuple(realised)


def _depths(rng: random.Random, n: int) -> list[float]:
    return sorted(rng.sample(GRID, n) if n <= len(GRID) else [rng.random() for _ in range(n)])


def _join(items: list[str]) -> str:
    """RULER's query list: ``a``, ``a, and b``, ``a, b, and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def build_niah(tokenizer, haystack: Haystack, length: int, seed: int, needles: int = 1, keys: int = 1,
               values: int = 1, queries: int = 1) -> Trial:
    """A niah prompt of exactly ``length`` tokens (see :mod:`lcc.eval.tasks` for the parameters)."""
    rng = random.Random(seed)
    distractors = needles - keys * values
    names = [f"{a}-{n}" for a, n in rng.sample([(a, n) for a in ADJECTIVES for n in NOUNS], keys + distractors)]
    numbers = [str(v) for v in rng.sample(range(10 ** 6, 10 ** 7), needles)]
    by_key = {names[k]: numbers[k * values:(k + 1) * values] for k in range(keys)}
    pairs = [(k, v) for k, vs in by_key.items() for v in vs] + list(zip(names[keys:], numbers[keys * values:]))
    lines = [NEEDLE.format(key=k, value=v) for k, v in pairs]
    rng.shuffle(lines)
    asked = [names[i] for i in rng.sample(range(keys), queries)]
    head, tail = NIAH_HEAD, NIAH_TAIL
    if queries * values == 1:  # RULER's singular wording
        head = head.replace("Some", "A").replace("numbers are", "number is").replace("the numbers", "the number")
        tail = tail.replace("are all", "is").replace(" are", " is").replace("numbers", "number")
    tail = tail.format(query=_join(asked))
    expected = tuple(v for k in asked for v in by_key[k])
    new = answer_tokens(len(expected))
    depths = _depths(rng, len(lines))
    ids, depths = assemble(tokenizer, haystack, length - new, head, lines, depths, tail, "niah", new)
    return Trial(ids, expected, depths, tuple(lines), new)


def build_vt(tokenizer, haystack: Haystack, length: int, seed: int, chains: int = 1, hops: int = 4) -> Trial:
    """A variable-tracking prompt of exactly ``length`` tokens: ``chains`` chains of ``hops`` + 1 assignments."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < chains * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    starts = [str(v) for v in rng.sample(range(10000, 100000), chains)]
    links = [[f"VAR {names[c * (hops + 1)]} = {starts[c]}."]
             + [f"VAR {names[c * (hops + 1) + j + 1]} = VAR {names[c * (hops + 1) + j]}." for j in range(hops)]
             for c in range(chains)]
    order = [c for c in range(chains) for _ in range(hops + 1)]
    rng.shuffle(order)  # a random interleaving; each chain keeps its own order
    lines = [links[c].pop(0) for c in order]
    expected = tuple(names[:hops + 1])
    new = answer_tokens(len(expected))
    tail = VT_TAIL.format(query=starts[0], count=hops + 1)
    depths = _depths(rng, len(lines))
    ids, depths = assemble(tokenizer, haystack, length - new, VT_HEAD, lines, depths, tail, "vt", new)
    return Trial(ids, expected, depths, tuple(lines), new)


BUILDERS = {"niah": build_niah, "vt": build_vt}


def string_match_all(output: str, expected) -> float:
    """RULER's score of one trial: the fraction of ``expected`` strings in ``output`` (case-insensitive)."""
    text = output.lower()
    return sum(e.lower() in text for e in expected) / len(expected)


def run_trial(program, tokenizer, trial: Trial) -> tuple[float, str]:
    """Greedy answer to ``trial`` (up to its ``new_tokens``, stopping at end of text) and its score."""
    from lcc.runtime import generate_ids

    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    out = generate_ids(program, torch.tensor([trial.ids]), trial.new_tokens, stop=stop)
    text = tokenizer.decode(out, skip_special_tokens=True)
    return string_match_all(text, trial.expected), text
