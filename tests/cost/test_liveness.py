"""The liveness walk: peak live bytes of a small exported graph, worked out by hand."""

import torch
from torch.export import Dim

from lcc.cost.graph import entry_cost
from lcc.cost.symbols import L


class Chain(torch.nn.Module):
    def forward(self, x):  # x [1, S, 8] float32
        a = x * 2  # 32 S bytes
        b = a.view(1, -1)  # view of a: keeps a alive
        c = torch.relu(x)  # 32 S bytes
        d = b.sum() + c.sum()  # reductions: 4 bytes each
        e = torch.cat([x, x], dim=1)  # 64 S bytes, a and b are dead by now
        return d, e


def _gm():
    x = torch.randn(1, 16, 8)
    ep = torch.export.export(Chain(), (x,), dynamic_shapes=({1: Dim("seq", min=2, max=1024)},), strict=False)
    return ep.module()


def test_peak_is_the_largest_set_of_simultaneously_live_tensors():
    e = entry_cost(_gm(), "prefill", None)
    peak, _ = e.peak(100)
    # at the first sum: a (32 S, alive through its view b) + c (32 S) + the sum (4) = 64 S + 4;
    # at the second sum a is dead (b's last use was the first sum): c + two scalars = 32 S + 8;
    # at `cat`: e (64 S) + d (4) = 64 S + 4 again.  Nothing is ever above 64 S + 4.
    assert peak == 64 * 100 + 4


def test_peak_formula_is_symbolic_in_L():
    e = entry_cost(_gm(), "prefill", None)
    _, step = e.peak(1000)
    assert e.peak_expr(step).coeff(L) == 64


def test_views_and_same_dtype_casts_allocate_nothing():
    e = entry_cost(_gm(), "prefill", None)
    views = [n for n in e.nodes if n.op == "aten.view"]
    assert views and all(n.out_bytes == 0 and n.alias for n in views)
