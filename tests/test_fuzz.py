"""Fuzzing the error contract: whatever the arguments, manifest or config, lcc exits 0, 1 (a failed check),
2 (bad input, one line) or 130 (interrupt), and never lets an exception (a traceback) out.

``lcc.cli.main`` runs in-process, so a case costs what its command costs; the strategies draw
from the values that broke lcc before (issue 20) and from plain garbage. The number of examples
is fixed (``derandomize``) so CI runs the same cases every time, within its two-minute budget.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcc.cli import main

CONTRACT = {0, 1, 2, 130}
FUZZ = settings(max_examples=75, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

LENGTHS = st.sampled_from(["0", "1", "2", "3", "-5", "12q", "1e9", "nan", "", "4k", "64", "9999999999999"])
NUMBERS = st.sampled_from(["0", "-1", "1", "nan", "inf", "-inf", "1e308", "x", "", "1000000000"])
PASSES = st.sampled_from([
    "flash", "flash:layers=9-3", "sliding-window:window=0,sinks=-1", "sliding-window:window=8,sinks=2",
    "rope-scaling:method=linear,factor=nan", "rope-scaling:method=yarn,factor=inf", "rope-scaling:factor=0",
    "attention-chunked:chunk=0", "attention-chunked:chunk=-8", "linear-attention:features=0",
    "rerope:window=0", "leaky-rerope:window=4,factor=0", "kv-quant:bits=3", "block-sparse:pattern=nope",
    "warp", ":", "flash:", "flash:layers=", "rerope:window=8",
])
PRESET = st.sampled_from(["tiny-llama", "tiny-qwen3", "tiny-bloom", "/no/such", ""])


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def assert_contract(argv: list[str]) -> None:
    code, err = run(argv)
    assert code in CONTRACT, (argv, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lcc: error: "), (argv, err)


@st.composite
def diff_args(draw):
    argv = ["diff", draw(PRESET), "--len", draw(LENGTHS)]
    for p in draw(st.lists(PASSES, max_size=2)):
        argv += ["--pass", p]
    return argv


@pytest.mark.slow
@FUZZ
@given(diff_args())
def test_diff_arguments_keep_the_error_contract(argv):
    assert_contract(argv)


@st.composite
def run_args(draw):
    return ["run", draw(PRESET), "--prompt", draw(st.sampled_from(["hi", "", " ", "ab\udcff", "x" * 3])),
            "--max-new-tokens", draw(NUMBERS)]


@pytest.mark.slow
@FUZZ
@given(run_args())
def test_run_arguments_keep_the_error_contract(argv):
    assert_contract(argv)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny):
    from lcc.compile import compile_model

    out = tmp_path_factory.mktemp("fuzz") / "a"
    compile_model(tiny("llama"), 32, "torch", [], out)
    return out


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 10 ** 12), st.text(max_size=8),
                        st.floats(allow_nan=True), st.lists(st.integers(), max_size=3), st.just({}))


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_tampered_manifests_keep_the_error_contract(artifact, tmp_path_factory, data):
    crafted = tmp_path_factory.mktemp("m") / "a"
    shutil.copytree(artifact, crafted)
    manifest = json.loads((crafted / "lcc.json").read_text())
    key = data.draw(st.sampled_from(sorted(manifest)))
    if data.draw(st.booleans()):
        del manifest[key]
    else:
        manifest[key] = data.draw(JSON_VALUES)
    (crafted / "lcc.json").write_text(json.dumps(manifest))
    assert_contract(["run", str(crafted), "--prompt", "hello", "--max-new-tokens", "2"])


CONFIG_FIELDS = ["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
                 "vocab_size", "intermediate_size", "max_position_embeddings", "rope_parameters", "model_type",
                 "rms_norm_eps", "tie_word_embeddings"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("hf") / "tiny"
    tiny("llama").model.save_pretrained(out)
    return out


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_tampered_configs_keep_the_error_contract(hf_dir, tmp_path_factory, data):
    crafted = tmp_path_factory.mktemp("c") / "m"
    shutil.copytree(hf_dir, crafted)
    config = json.loads((crafted / "config.json").read_text())
    for key in data.draw(st.lists(st.sampled_from(CONFIG_FIELDS), min_size=1, max_size=2, unique=True)):
        config[key] = data.draw(JSON_VALUES)
    (crafted / "config.json").write_text(json.dumps(config))
    assert_contract(["inspect", str(crafted)])
