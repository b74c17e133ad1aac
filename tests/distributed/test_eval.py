"""``lcc eval --pass context-parallel:ranks=N`` runs its task in N forked ranks and gives the single-process result.

Oracle: the same command without the pass (one process); the pass is exact, so the perplexity agrees to
float32 reassociation.
"""

import json

import pytest

from lcc.cli import main


def _eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_ppl_on_two_ranks_is_the_single_process_ppl(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth. " * 8)
    args = ["tiny-llama", "--task", "ppl", "--lengths", "61", "--windows", "2", "--text", str(text)]
    want = _eval_json(capsys, *args)["results"][0]
    got = _eval_json(capsys, *args, "--pass", "context-parallel:ranks=2")
    assert got["passes"][0].startswith("context-parallel:ranks=2")  # run in-process, its collectives would fail
    (got,) = got["results"]
    assert got["tokens"] == want["tokens"] == 2 * 60  # 61 splits unevenly over 2 x 2 chunks: padded
    assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-5)
