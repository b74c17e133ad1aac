"""TVM (llvm) lowering of ``lcc.rerope_attention`` for every mapping kind, through ``lcc diff --backend tvm``."""

import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'apache-tvm>=0.20'")


@pytest.mark.parametrize("spec", ["self-extend:group=2,window=8", "dca:chunk=24,local=4",
                                  pytest.param("rerope:window=8", marks=pytest.mark.slow)])
def test_remapped_attention_lowers_natively_and_matches_its_stage(spec):
    """tiny-llama at 32 tokens, windows and chunks well inside it (every branch occurs): the lowered
    logits equal the pass stage's within the fp32 logit limit (the op's reference does not export with a
    dynamic length, so without this lowering TVM refuses the program)."""
    import lcc.backends.tvm.rerope  # noqa: F401  (registers the lowering; lcc.backends.tvm.register should import it)
    from lcc.diff import diff
    from lcc.models import load_model
    from lcc.ops import registry

    assert registry.lowering("rerope_attention", "tvm") is not None
    stage, lowered = diff(load_model("tiny-llama"), [spec], length=32, backend="tvm")[-2:]
    assert stage.name == spec and not stage.exact and stage.vs_prev_max_abs > 1e-3  # the pass did change the model
    assert lowered.name == "lowered:tvm" and lowered.ok and lowered.vs_prev_max_abs <= lowered.limit


def test_bad_mapping_falls_back_with_its_reason():
    from lcc.backends.tvm.rerope import rerope_unsupported

    args = dict(mask="causal", kind="self-extend", window=4, leaky_factor=0.0, group=0, chunk_size=0)
    assert "group" in rerope_unsupported(args)
    assert rerope_unsupported(dict(args, group=2)) is None
