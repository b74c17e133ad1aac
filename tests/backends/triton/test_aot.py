"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 with no GPU present.

Runs ``python -m lcc.backends.triton.aot`` in fresh processes (one per architecture, in
parallel): this directory's conftest puts triton in interpreter mode, and AOT needs it compiled.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def compile_in_subprocesses(*flags):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    procs = {arch: subprocess.Popen([sys.executable, "-m", "lcc.backends.triton.aot", "--json", "--arch", str(arch),
                                     *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for arch in (80, 90)}
    records = []
    for arch, p in procs.items():
        out, err = p.communicate(timeout=1200)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines, f"sm_{arch}: no output\n{err[-3000:]}"
        records += lines
    return records


def check(records):
    failed = [r for r in records if not r["ok"]]
    assert not failed, "\n".join(f"sm_{r['arch']} {r['kernel']}: {r['error']}" for r in failed)
    assert all(r["ptx"] > 0 and r["cubin"] > 0 for r in records)
    return {r["kernel"].split("[")[0] for r in records}, {r["arch"] for r in records}


def test_every_kernel_and_mask_compiles_for_sm80_and_sm90():
    kernels, archs = check(compile_in_subprocesses())
    assert kernels == {"attn_fwd", "decode_split", "decode_merge", "linear_attn"}
    assert archs == {80, 90}


@pytest.mark.slow
def test_full_dtype_head_dim_mask_matrix_compiles():
    kernels, archs = check(compile_in_subprocesses("--full"))
    assert archs == {80, 90}


def test_every_kernel_a_module_launches_has_an_aot_variant():
    """Each module's ``KERNELS`` is compiled by one of the AOT tests: this file's (attention, decode, linear
    attention), test_rerope_kernel's and test_kv_decode's, so a new kernel without a variant fails here."""
    import importlib
    import pkgutil

    import lcc.backends.triton as pkg
    from lcc.backends.triton import aot, kv_decode, rerope

    launched = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        launched.update({id(k): f"{info.name}.{k.__name__}" for k in getattr(module, "KERNELS", ())})
    compiled = {id(v.kernel) for v in aot.variants() + rerope.aot_variants()}
    compiled |= {id(kernel) for arch in aot.ARCHS for _, kernel, *_ in kv_decode.aot_variants(arch, quick=True)}
    assert {"attention.attn_fwd", "decode.decode_split", "decode.decode_merge", "kv_decode.kvq_split",
            "rerope.rerope_fwd", "rerope.rerope_decode_split", "linear_attention.linear_attn_fwd"} <= set(launched.values())
    assert not [name for i, name in launched.items() if i not in compiled]
