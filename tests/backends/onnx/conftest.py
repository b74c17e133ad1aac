import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="session")
def lowered(tiny, tmp_path_factory):
    """``get(family, passes=())`` -> (program, artifact dir, OnnxProgram), lowered once per session.

    Capacity 64.  tiny-llama goes through ``BACKEND.lower`` (what ``lcc compile --backend onnx``
    calls; its ``Lowered`` is kept in ``lowered.results``) and gets the onnxruntime-genai model;
    the other families skip genai to keep the suite short.
    """
    from lcc.backends.onnx import BACKEND, OnnxProgram, lower
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
            if family == "llama" and not passes:
                out.mkdir()  # as compile_model hands it over: an empty temporary directory
                get.results[key] = BACKEND.lower(program, out)
            else:
                lower(program, out, genai=False, tokenizer=loaded.tokenizer)
            cache[key] = program, out, OnnxProgram(out)
        return cache[key]

    get.results = {}
    return get
