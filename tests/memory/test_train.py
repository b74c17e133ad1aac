"""lcc train-memory on tiny-llama: only the memory moves, the loss falls, the pass uses the file."""

import torch
from safetensors import safe_open

from lcc.memory import rmt_nll, train_memory
from lcc.passes.memory_tokens import init_memory


def test_rmt_nll_equals_the_programs_perplexity_entry(tiny):
    from lcc.capture.export import capture
    from lcc.passes import apply_passes, canonicalize

    loaded = tiny("llama")
    program = apply_passes(canonicalize(capture(loaded, 64, entries=("prefill_logits",))),
                           ["memory-tokens:count=4,segment=16"])
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    mem = init_memory(loaded.model.model.embed_tokens.weight, 4, seed=0)
    with torch.inference_mode():
        total, n = rmt_nll(loaded.model, mem, x, 16)
        logits = program.entries["prefill_logits"](x, *program.cache.empty())[0][0, :-1]
    want = -torch.log_softmax(logits.double(), -1).gather(-1, x[0, 1:, None]).sum()
    assert n == 39
    assert abs(float(total) - float(want)) < 1e-3 * float(want)


def test_training_moves_only_the_memory_and_lowers_the_loss(tiny):
    loaded = tiny("llama")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    text = torch.randint(0, 256, (600,), generator=torch.Generator().manual_seed(1)).tolist()
    mem0 = init_memory(loaded.model.model.embed_tokens.weight, 4, seed=0)
    mem, losses = train_memory(loaded, 4, 16, 30, text[:64] * 8, lr=5e-2, seed=0)  # a repeated text: learnable
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(mem, mem0)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_cli_trains_writes_and_runs_the_memory(tiny, tmp_path, capsys):
    from lcc.cli import main

    tiny("llama")
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth. " * 40)
    out = tmp_path / "m.safetensors"
    assert main(["train-memory", "tiny-llama", "--count", "4", "--segment", "16", "--steps", "2", "--text",
                 str(text), "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert f.get_tensor("memory").shape == (4, tiny("llama").spec.hidden)
        assert f.metadata()["segment"] == "16"
    spec = f"memory-tokens:count=4,segment=16,memory={out}"
    assert main(["run", "tiny-llama", "--prompt", "In the beginning God", "--max-new-tokens", "40",
                 "--pass", spec]) == 0
    assert main(["diff", "tiny-llama", "--len", "64", "--pass", spec]) == 0
    assert "memory-tokens" in capsys.readouterr().out
    assert main(["train-memory", "tiny-llama", "--text", str(text), "--out", str(tmp_path / "m.bin")]) == 2
    assert main(["run", "tiny-llama", "--prompt", "In the beginning", "--pass",
                 "memory-tokens:count=4,memory=/no/such.safetensors"]) == 2
