"""``lcc.runtime.to_device``: a program's weights and graph-created tensors moved together."""

import pytest
import torch

from lcc.capture.export import capture
from lcc.passes import apply_passes, canonicalize
from lcc.runtime import device_of, generate_ids, to_device
from tests.test_cli import lcc


def test_to_device_rewrites_graph_devices_and_leaves_the_original(tiny):
    loaded = tiny("llama")
    program = apply_passes(canonicalize(capture(loaded, capacity=64)), ["flash"])
    prompt = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(5))
    want = generate_ids(program, prompt, 10)
    created = [v for gm in program.entries.values() for n in gm.graph.nodes
               for v in (*n.args, *n.kwargs.values()) if isinstance(v, torch.device)]
    assert created and all(d.type == "cpu" for d in created)  # torch.export recorded where tensors are made
    # "meta" stands in for an accelerator: every graph-created tensor must follow the weights there
    moved = to_device(program, "meta")
    assert device_of(moved) == torch.device("meta") and device_of(program) == torch.device("cpu")
    for gm in moved.entries.values():
        assert all(p.device.type == "meta" for p in gm.parameters())
        for node in gm.graph.nodes:
            devices = [v for v in (*node.args, *node.kwargs.values()) if isinstance(v, torch.device)]
            assert all(d.type == "meta" for d in devices), node.format_node()
    assert all(p.device.type == "cpu" for gm in program.entries.values() for p in gm.parameters())
    assert generate_ids(to_device(program, "cpu"), prompt, 10) == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_eval_device_cuda_without_cuda_is_a_usage_error():
    r = lcc("eval", "tiny-llama", "--task", "ppl", "--lengths", "64", "--device", "cuda", "--text", "README.md")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--device cuda" in r.stderr, r.stderr
