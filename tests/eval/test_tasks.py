"""`lcc eval --task` strings, and one run of each task on tiny-llama through the command line."""

import json

import pytest

from lcc.eval.tasks import Task

TEXT = ("In the beginning was the Word, and the Word was with God. The same was in the beginning with God. "
        "All things were made by him; and without him was not any thing made that was made. In him was life; "
        "and the life was the light of men. And the light shineth in darkness; and the darkness comprehended "
        "it not. There was a man sent from God, whose name was John. ") * 12


def test_task_strings_fill_defaults_and_print_what_differs():
    assert Task.parse("niah").kwargs == {"needles": 1, "keys": 1, "values": 1, "queries": 1}
    assert Task.parse("vt").kwargs == {"chains": 1, "hops": 4}
    assert Task.parse("ppl").kwargs == {"last": 0} and str(Task.parse("ppl")) == "ppl"
    assert str(Task.parse("ppl:last=4k")) == "ppl:last=4096"
    assert str(Task.parse("niah:keys=4,needles=4")) == "niah:needles=4,keys=4"
    assert Task.parse("passkey") == Task("passkey") and str(Task.parse("vt:hops=4")) == "vt"


@pytest.mark.parametrize("task,length", [("passkey", 256), ("ppl:last=128", 256),
                                         ("niah:needles=3,keys=2,queries=2", 640), ("vt:chains=2,hops=1", 512)])
def test_each_task_runs_on_tiny_llama_with_json_and_plot(tmp_path, capsys, task, length):
    """Short runs (tiny-llama's tokenizer is one token per character); any score in [0, 1] will do."""
    from lcc.cli import main

    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    plot = tmp_path / "p.png"
    capsys.readouterr()
    assert main(["eval", "tiny-llama", "--task", task, "--lengths", str(length), "--trials", "1", "--windows", "1",
                 "--text", str(text), "--json", "--plot", str(plot)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == task and doc["model"] and doc["passes"] == []
    (row,) = doc["results"]
    assert row["length"] == length
    if task.startswith("ppl"):
        assert row["ppl"] > 1 and row["protocol"] == "last-128" and row["tokens"] == 128
    else:
        assert 0 <= row["accuracy"] <= 1 and row["trials"] == 1
    if task.startswith(("niah", "vt")):
        assert row["accuracy"] <= row["score"] <= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name not in ("t.txt", "p.png")]  # no temp file left
