"""``--backend triton``: the lcc_triton triton_ops against the op references, and a compiled, reloaded
tiny-llama against transformers' greedy tokens."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from lcc.ops.attention import attention_reference

CASES = [  # (Sq, Sk, mask, kv_len): prefill over several query/key blocks, decode, chunked prefill
    (300, 300, "causal", None),
    (300, 300, "sliding:window=70,sinks=4", None),
    (130, 130, "full", None),
    (96, 200, "causal", 170),
    (1, 200, "causal", 137),
    (1, 200, "sliding:window=40,sinks=3", 150),
    (140, 140, "block-local:block=32,blocks=2", None),
]


@pytest.mark.parametrize("sq,sk,mask,kv_len", CASES)
def test_kernels_behind_the_triton_op_match_the_reference(device, sq, sk, mask, kv_len):
    """The traceable launchers (device-built key-block lists; interpreted on CPU) equal lcc.attention's oracle."""
    from lcc.backends.triton.ops import attention_kernels

    g = torch.Generator().manual_seed(sq + sk)
    q, k, v = (torch.randn(1, h, s, 32, generator=g).to(device) for h, s in ((6, sq), (2, sk), (2, sk)))
    n = None if kv_len is None else torch.tensor(kv_len, device=device)
    got = attention_kernels(q, k, v, n, 0.2, mask)
    want = attention_reference(q.cpu(), k.cpu(), v.cpu(), None if n is None else n.cpu(), 0.2, mask)
    tol = 2e-5 if device == "cpu" else 2e-3  # tf32-free fp32 ("ieee") on CUDA, reassociated sums
    torch.testing.assert_close(got.cpu(), want, atol=tol, rtol=tol)


def test_key_block_lists_visit_exactly_the_blocks_the_mask_touches():
    """Row by row, the CSR lists the key blocks holding a kept pair, the whole ones first."""
    from lcc.backends.triton.ops import key_block_lists
    from lcc.ops.masks import MaskSpec

    mask, sq, sk, bm, bn = "sliding:window=50,sinks=5", 200, 260, 32, 16
    row_ptr, n_full, cols = key_block_lists(mask, sq, sk, torch.tensor([230]), bm, bn)
    keep = MaskSpec.parse(mask).mask_mod()(torch.arange(230 - sq, 230)[:, None], torch.arange(sk)[None, :])
    keep &= torch.arange(sk)[None, :] < 230
    for m in range(-(-sq // bm)):
        rows = keep[m * bm:(m + 1) * bm]
        want = {j for j in range(-(-sk // bn)) if rows[:, j * bn:(j + 1) * bn].any()}
        got = cols[row_ptr[m]:row_ptr[m + 1]].tolist()
        assert sorted(got) == sorted(want) and len(got) == len(want)
        assert all(rows[:, j * bn:(j + 1) * bn].all() for j in got[:n_full[m]])


def test_triton_op_on_cpu_runs_the_reference():
    """The CPU kernel registration of lcc_triton::attention is lcc.attention's reference."""
    import lcc.backends.triton.ops  # noqa: F401

    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 9, 16, generator=g), torch.randn(1, 2, 9, 16, generator=g), torch.randn(1, 2, 9, 16)
    got = torch.ops.lcc_triton.attention(q, k, v, None, 0.25, "causal")
    want = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                            is_causal=True, scale=0.25)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_retarget_points_every_attention_and_rope_at_the_triton_ops(tiny):
    from lcc.backends.triton.compile import retarget
    from lcc.capture import capture
    from lcc.passes import canonicalize

    program = canonicalize(capture(tiny("llama"), capacity=32))
    gm, native, left = retarget(program.entries["decode"])
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "lcc" in str(n.target)]
    assert targets and all(t.startswith("lcc_triton.") for t in targets)
    assert set(native) == {"attention", "rope"} and left == []
    assert any("lcc.attention" in str(n.target) for n in program.entries["decode"].graph.nodes)  # original kept


RUN = textwrap.dedent("""
    import json, sys
    import torch
    import torch._inductor.compile_fx as cfx
    def boom(*a, **k):
        raise AssertionError("the artifact was compiled again at load")
    cfx.compile_fx = cfx.compile_fx_inner = boom
    from lcc.capture.program import CacheLayout
    from lcc.compile import load_artifact
    from lcc.runtime import generate_ids
    manifest, runnable, _ = load_artifact(sys.argv[1])
    ids = torch.tensor([json.loads(sys.argv[2])])
    print(json.dumps(generate_ids(runnable, ids, 8, cache_layout=CacheLayout(**manifest["cache"]))))
""")


@pytest.mark.slow
def test_compiled_tiny_llama_reloads_in_a_fresh_process_and_generates_transformers_tokens(compiled_tiny_llama):
    """lcc compile --backend triton, then a new process loads the AOTInductor packages and decodes greedily."""
    loaded, result = compiled_tiny_llama
    lowering = result.manifest["lowering"]
    assert set(lowering["native"]) == {"attention", "rope"} and lowering["fallbacks"] == []
    assert result.report["lowered"]["ok"] and result.report["lowered"]["max_abs"] <= result.report["lowered"]["limit"]
    prompt = torch.randint(3, loaded.spec.vocab, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = loaded.model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0,
                                     attention_mask=torch.ones_like(prompt))[0, 10:].tolist()
    r = subprocess.run([sys.executable, "-c", RUN, str(result.out), json.dumps(prompt[0].tolist())],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == want
