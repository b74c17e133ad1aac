"""Half precision through lcc diff and lcc run: HF eager in the same dtype is the oracle, an fp32 copy of the
same weights measures the dtype's own noise, and an exact stage may be at most HALF_FACTOR times as far from
fp32 as HF eager itself is (README, "Numerics")."""

import pytest
import torch

from lcc.capture import capture
from lcc.diff import HALF_FACTOR, LOGIT_TOL, REL_TOL, Oracle32, Outputs, compare, diff, hf_outputs, logit_limit
from lcc.dtypes import parse_dtype
from lcc.errors import UsageError
from lcc.models import load_model
from lcc.passes import canonicalize
from tests.conftest import TINY_FAMILIES
from tests.test_bad_input import _one_line


@pytest.mark.parametrize("text,name", [("fp32", "float32"), ("FP16", "float16"), ("half", "float16"),
                                       ("bf16", "bfloat16"), ("bfloat16", "bfloat16")])
def test_dtype_spellings(text, name):
    assert parse_dtype(text) == name


@pytest.mark.parametrize("text", ["fp8", "int8", "float64", ""])
def test_unknown_dtype_is_refused(text):
    with pytest.raises(UsageError, match="fp32, fp16 or bf16"):
        parse_dtype(text)


def test_cli_refuses_an_unknown_dtype_before_loading(capsys):
    _one_line(capsys, 2, ["diff", "tiny-llama", "--dtype", "fp8"], "--dtype fp8")
    _one_line(capsys, 2, ["run", "tiny-llama", "--prompt", "hi", "--kv-cache-dtype", "e4m3"], "--kv-cache-dtype")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_half_program_is_as_close_to_fp32_as_hf_eager_in_that_dtype(family, dtype):
    loaded = load_model(f"tiny-{family}", dtype=dtype)
    assert next(loaded.model.parameters()).dtype == getattr(torch, dtype) and loaded.spec.dtype == dtype
    reports = {r.name: r for r in diff(loaded, ["flash", "sliding-window:window=1k,sinks=0"], length=64)}
    for name in ("captured", "canonical", "flash:layers=all"):
        r = reports[name]
        assert r.against == "fp32 oracle" and r.ok, r
        # the limit is the fp32 rule plus HALF_FACTOR x the distance of HF eager (same dtype) from fp32
        assert r.limit > logit_limit(torch.ones(1)) and r.vs_prev_max_abs <= r.limit


def test_half_oracle_is_hf_eager_of_the_same_weights_in_fp32(tiny):
    half = load_model("tiny-llama", dtype="bfloat16")
    ids = torch.randint(0, half.spec.vocab, (1, 32))
    wide = load_model("tiny-llama")  # the same seeded weights in fp32, before rounding
    wide.model.load_state_dict({k: v.float() for k, v in half.model.state_dict().items()})
    want = hf_outputs(wide, ids).logits
    from lcc.diff import fp32_oracle

    oracle = fp32_oracle(half, ids)
    assert torch.equal(oracle.outputs.logits, want)
    assert oracle.noise == pytest.approx(float((hf_outputs(half, ids).logits - want).abs().max()))
    assert oracle.noise > 0  # bf16 rounds: a zero here would mean the oracle ran in bf16 too


def test_half_rule_catches_an_error_twice_the_noise():
    torch.manual_seed(0)
    ref32 = Outputs(torch.randn(8, 50) * 10, torch.zeros(2, 8, 4))
    noise = 0.05
    oracle = Oracle32(ref32, noise)
    limit = LOGIT_TOL + REL_TOL * float(ref32.logits.abs().max()) + HALF_FACTOR * noise

    def shifted(d):
        return Outputs(ref32.logits + d, ref32.hidden)

    assert compare(ref32, shifted(0.99 * limit), "captured", True, fp32=oracle).ok
    bad = compare(ref32, shifted(1.01 * limit), "captured", True, fp32=oracle)
    assert not bad.ok and bad.limit == pytest.approx(limit)
    assert compare(ref32, shifted(5.0), "sliding-window", False, fp32=oracle).ok  # approximate: reported only


@pytest.mark.parametrize("kv", ["float16", "bfloat16"])
def test_cache_dtype_is_the_caches_and_attention_reads_it(kv):
    loaded = load_model("tiny-llama")
    program = canonicalize(capture(loaded, 32, entries=("prefill_logits",), cache_dtype=kv))
    assert all(t.dtype == getattr(torch, kv) for t in program.cache.empty())
    ids = torch.randint(0, loaded.spec.vocab, (1, 16))
    logits, *cache = program.entries["prefill_logits"](ids, *program.cache.empty())
    assert all(t.dtype == getattr(torch, kv) for t in cache)
    want = hf_outputs(loaded, ids).logits  # fp32 oracle: the cache's rounding is the only difference
    err = float((logits[0].float() - want).abs().max())
    assert 0 <= err < 0.05 * float(want.abs().max())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_greedy_tokens_agree_with_hf_generate(dtype):
    from lcc.runtime import generate_ids

    loaded = load_model("tiny-llama", dtype=dtype)
    ids = torch.randint(3, loaded.spec.vocab, (1, 12), generator=torch.Generator().manual_seed(1))
    program = canonicalize(capture(loaded, 64))
    got = generate_ids(program, ids, 6)
    with torch.inference_mode():
        want = loaded.model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)[0, 12:].tolist()
        logits = loaded.model(torch.tensor([ids[0].tolist() + want])).logits[0, 11:].float()
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:  # a near-tie in the dtype's rounding is the only excuse, and decoding then diverges
            top = logits[i].topk(2).values
            assert float(top[0] - top[1]) < 0.05, (i, got, want)
            break


def test_cli_run_in_half_precision(capsys):
    from lcc.cli import main

    assert main(["run", "tiny-llama", "--dtype", "bf16", "--kv-cache-dtype", "bf16", "--prompt", "hello",
                 "--max-new-tokens", "3"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_smollm2_half_precision_stages(dtype):
    loaded = load_model("smollm2-135m", dtype=dtype)
    reports = diff(loaded, ["flash", "sliding-window:window=4096,sinks=4"], length=128)
    assert all(r.ok for r in reports), [(r.name, r.vs_prev_max_abs, r.limit) for r in reports]
    by = {r.name: r for r in reports}
    assert by["captured"].against == "fp32 oracle" and by["captured"].top1 >= 0.9


def test_compile_bf16_records_dtypes_and_run_refuses_another(tmp_path, capsys):
    import json

    from lcc.cli import main

    out = tmp_path / "a"
    assert main(["compile", "tiny-llama", "--target-len", "128", "--pass", "flash", "--dtype", "bf16",
                 "--kv-cache-dtype", "fp16", "--out", str(out)]) == 0
    m = json.loads((out / "lcc.json").read_text())
    assert (m["dtype"], m["cache"]["dtype"], m["target"]) == ("bfloat16", "float16", "cpu")
    from safetensors import safe_open

    with safe_open(str(out / "weights.safetensors"), "pt") as f:
        kinds = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    # weights in bf16; only RoPE's inverse frequencies stay fp32, as transformers keeps them
    assert {k for k, d in kinds.items() if d != "BF16"} == {k for k in kinds if "inv_freq" in k}
    assert sum(d == "BF16" for d in kinds.values()) > 10
    assert main(["run", str(out), "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    _one_line(capsys, 2, ["run", str(out), "--prompt", "hello", "--dtype", "fp32"], "compiled for bfloat16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_target_compiles_unchecked_here_and_refuses_to_run(tmp_path, capsys):
    import json

    from lcc.cli import main

    out = tmp_path / "c"
    assert main(["compile", "tiny-llama", "--target-len", "128", "--pass", "flash", "--target", "cuda:sm_90",
                 "--out", str(out)]) == 0
    assert json.loads((out / "lcc.json").read_text())["target"] == "cuda:sm_90"
    assert "unchecked (no CUDA here)" in (out / "report.md").read_text()
    capsys.readouterr()
    _one_line(capsys, 2, ["run", str(out), "--prompt", "hi"], "no CUDA device")


def test_a_dtype_the_backend_cannot_emit_is_refused_before_work(capsys, tmp_path):
    _one_line(capsys, 2, ["compile", "tiny-llama", "--target-len", "128", "--pass", "flash", "--backend", "tvm",
                          "--dtype", "fp16", "--out", str(tmp_path / "t")], "the tvm backend emits float32")
    assert not (tmp_path / "t").exists()
