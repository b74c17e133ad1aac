"""Attention cost per algo against what the implementation executes (torch's FLOP counter is the oracle)."""

import pytest
import sympy
import torch
from torch.utils.flop_counter import FlopCounterMode

import lcc.ops  # noqa: F401
from lcc.cost.attention import attention_node_cost, working_set

B, HQ, HKV, S, D = 1, 4, 2, 256, 16


def _executed_matmul_flops(mask: str, algo: str) -> int:
    """Run the CPU implementation ``algo`` selects (lcc.ops.attention.attention) under the FLOP counter."""
    from lcc.ops.attention import attention_chunked, parse_algo, attention_reference

    q, k, v = torch.randn(B, HQ, S, D), torch.randn(B, HKV, S, D), torch.randn(B, HKV, S, D)
    name, args = parse_algo(algo)
    with FlopCounterMode(display=False) as counter:
        if name == "reference":
            attention_reference(q, k, v, None, D**-0.5, mask)
        elif name == "auto":
            attention_chunked(q, k, v, None, D**-0.5, mask, skip_keys=False)
        elif name == "flash":  # a sliding mask: attention_flash_cpu hands it to the key-skipping chunked path
            assert mask != "causal"
            attention_chunked(q, k, v, None, D**-0.5, mask)
        else:
            attention_chunked(q, k, v, None, D**-0.5, mask, chunk=args.get("chunk", 0))
    return counter.get_total_flops()


def _predicted_matmul_flops(mask: str, algo: str) -> int:
    kernels, _ = attention_node_cost(B, HQ, HKV, S, S, D, D, mask, algo, "cpu")
    return int(sum(k.flops for k in kernels if k.unit == "matmul"))


@pytest.mark.parametrize("mask,algo", [
    ("causal", "reference"), ("causal", "auto"), ("causal", "chunked:chunk=64"),
    ("sliding:window=32,sinks=4", "chunked:chunk=64"), ("sliding:window=32,sinks=4", "auto"),
    ("sliding:window=32,sinks=4", "flash"),
])
def test_matmul_flops_equal_what_the_cpu_implementation_runs(mask, algo):
    assert _predicted_matmul_flops(mask, algo) == _executed_matmul_flops(mask, algo)


def test_io_aware_kernel_on_cuda_costs_the_ops_own_count():
    from lcc.ops.attention import attention_cost

    kernels, work = attention_node_cost(B, HQ, HKV, S, S, D, D, "causal", "flash", "cuda")
    assert sum(k.flops for k in kernels) == attention_cost(B, HQ, HKV, S, S, D, D, "causal")[0]
    assert work == 0


def test_working_sets_order_and_growth():
    L = sympy.Symbol("L", positive=True)
    sizes = {a: working_set(1, 9, 3, L, L, 64, 64, "causal", a, "cpu")
             for a in ("reference", "auto", "chunked:chunk=1024")}
    at = {a: [float(e.subs(L, n)) for n in (8192, 32768)] for a, e in sizes.items()}
    assert at["reference"][0] > 5 * max(at["auto"][0], at["chunked:chunk=1024"][0])
    assert at["reference"][1] / at["reference"][0] == pytest.approx(16, rel=0.01)  # quadratic
    assert at["chunked:chunk=1024"][1] / at["chunked:chunk=1024"][0] == pytest.approx(4, rel=0.05)  # linear
    flash_gpu = working_set(1, 9, 3, 32768, 32768, 64, 64, "causal", "flash", "cuda")
    assert flash_gpu == 4 * 9 * 32768 * 64  # the output only


def test_cpu_flash_on_causal_prefill_is_the_fused_kernel_and_auto_on_cuda_is_not():
    """Causal self-attention with algo=flash runs torch's fused SDPA on the CPU (lcc.ops.attention): the op's own
    count of kept pairs, a working set that does not grow with L^2; algo=auto is unfused on every device."""
    from lcc.ops.attention import attention_cost

    kernels, work = attention_node_cost(B, HQ, HKV, S, S, D, D, "causal", "flash", "cpu")
    assert sum(k.flops for k in kernels if k.unit == "matmul") == attention_cost(B, HQ, HKV, S, S, D, D, "causal")[0]
    L = sympy.Symbol("L", positive=True)
    ws = working_set(1, 9, 3, L, L, 64, 64, "causal", "flash", "cpu")
    assert sympy.degree(sympy.expand(ws), L) == 1
    # a cache offset (decode, chunked prefill) is not the fused kernel's case: the chunked path prices it
    _, offset_work = attention_node_cost(B, HQ, HKV, S, S, D, D, "causal", "flash", "cpu", self_attention=False)
    assert offset_work != work
    unfused = {dev: attention_node_cost(1, 9, 3, 32768, 32768, 64, 64, "causal", "auto", dev)[0]
               for dev in ("cpu", "cuda")}
    scores = 9 * 32768 * 32768  # auto computes every query-key pair and streams each score through memory
    for kernels in unfused.values():
        assert sum(k.bytes for k in kernels) > 32 * scores
