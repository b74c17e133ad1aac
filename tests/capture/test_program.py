"""Graph copies made within ``graphs_not_run``: they skip generating code, yet run and export as eager copies do."""

from types import SimpleNamespace

import torch
from torch.export import Dim

from lcc.capture.program import copy_graph_module, generate_code, graphs_not_run


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 6)

    def forward(self, x):
        return torch.nn.functional.silu(self.proj(x)) * 2


def test_lazy_copies_run_and_export_like_the_module():
    torch.manual_seed(0)
    block = _Block()
    gm = torch.export.export(block, (torch.randn(3, 6),), dynamic_shapes=({0: Dim("n")},)).module()
    with graphs_not_run():
        lazy, exported = copy_graph_module(gm), copy_graph_module(gm)
    assert not hasattr(lazy, "_code") and hasattr(copy_graph_module(gm), "_code")  # no code yet; eager outside
    x = torch.randn(5, 6)
    with torch.no_grad():
        want = block(x)  # the oracle: the eager module itself
        assert torch.allclose(lazy(x), want, atol=1e-6)
    generate_code(SimpleNamespace(entries={"f": exported}))
    again = torch.export.export(exported, (torch.randn(3, 6),), dynamic_shapes=({0: Dim("n")},)).module()
    with torch.no_grad():
        assert torch.allclose(again(x), want, atol=1e-6)
