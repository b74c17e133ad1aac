"""Passkey retrieval (Mohtashami & Jaggi 2023, Landmark Attention, appendix): find a 5-digit key in filler.

The prompt is the task description, filler sentences with the key line inserted at a
given depth, and the question; the answer is read from greedy decoding.  The key and
nothing else varies with the seed, so trials are reproducible.  A trial *at length L* is a
prompt of L - ANSWER_TOKENS tokens and ANSWER_TOKENS generated, so it fits a cache (an
artifact) of capacity exactly L.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from lcc.errors import UsageError

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
ANSWER_TOKENS = 8  # tokens generated for the answer; a trial at length L prompts with L - ANSWER_TOKENS


def prompt_length(length: int) -> int:
    """Tokens of the prompt of a trial at ``length`` (prompt and answer together fill ``length``)."""
    return length - ANSWER_TOKENS


@dataclass(frozen=True)
class PasskeyPrompt:
    ids: list[int]
    key: str
    depth: float


def build_prompt(tokenizer, length: int, depth: float, seed: int) -> PasskeyPrompt:
    """A prompt of exactly ``length`` tokens (filler trimmed/padded) with the key at ``depth`` in [0, 1]."""
    key = str(random.Random(seed).randint(10000, 99999))
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, info, tail = enc(TASK + " "), enc(f" The pass key is {key}. Remember it. {key} is the pass key. "), enc(
        " " + QUESTION)
    sentences = [enc(" " + x.strip() + ".") for x in FILLER.split(".") if x.strip()]
    room = length - len(head) - len(info) - len(tail)
    if room < 0:
        raise UsageError(f"a passkey prompt needs at least {length - room} tokens with this tokenizer (a trial at "
                         f"length L prompts with L - {ANSWER_TOKENS}); asked for {length}")
    pad: list[int] = []
    bounds = [0]  # sentence boundaries inside pad
    i = 0
    while len(pad) < room:
        pad += sentences[i % len(sentences)]
        bounds.append(len(pad))
        i += 1
    pad = pad[:room]
    bounds = [b for b in bounds if b <= room]
    cut = min(bounds, key=lambda b: abs(b - depth * room))  # the sentence boundary nearest the depth
    ids = head + pad[:cut] + info + pad[cut:] + tail
    return PasskeyPrompt(ids, key, depth)


def answer_matches(text: str, key: str) -> bool:
    found = re.findall(r"\d{5}", text.replace(" ", ""))
    return bool(found) and found[0] == key


def run_trial(program, tokenizer, prompt: PasskeyPrompt, new_tokens: int = ANSWER_TOKENS,
              cache_layout=None) -> tuple[bool, str]:
    from lcc.runtime import generate_ids

    ids = torch.tensor([prompt.ids])
    out = generate_ids(program, ids, new_tokens, cache_layout=cache_layout)
    text = tokenizer.decode(out, skip_special_tokens=True)
    return answer_matches(text, prompt.key), text
