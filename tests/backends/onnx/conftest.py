import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="session")
def lowered(tiny, tmp_path_factory):
    """``get(family, passes=())`` -> (program, artifact dir, OnnxProgram), lowered once per session.

    Capacity 64; the onnxruntime-genai model is written for tiny-llama only (it is what the genai
    test reads), the other families skip it to keep the suite short.
    """
    from lcc.backends.onnx import OnnxProgram, lower
    from lcc.capture.export import capture
    from lcc.passes import apply_passes, canonicalize, parse_pass

    cache = {}

    def get(family, passes=()):
        key = (family, tuple(passes))
        if key not in cache:
            loaded = tiny(family)
            program = canonicalize(capture(loaded, capacity=64))
            program = apply_passes(program, [parse_pass(p) for p in passes])
            out = tmp_path_factory.mktemp(f"onnx-{family}") / "artifact"
            genai = family == "llama" and not passes
            lower(program, out, genai=genai, tokenizer=loaded.tokenizer)
            cache[key] = program, out, OnnxProgram(out)
        return cache[key]

    return get
