"""Sample text for diffs and smoke tests (public-domain), and long-text sources for evaluation."""

from __future__ import annotations

from importlib import resources


def sample_text() -> str:
    return resources.files(__package__).joinpath("sample.txt").read_text()


def sample_ids(tokenizer, length: int, vocab: int) -> list[int]:
    """``length`` token ids of real text (repeated as needed); seeded random ids if there is no tokenizer."""
    if tokenizer is None:
        import torch

        g = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab, (length,), generator=g).tolist()
    ids = tokenizer(sample_text(), add_special_tokens=False)["input_ids"]
    reps = length // len(ids) + 1
    return (ids * reps)[:length]
