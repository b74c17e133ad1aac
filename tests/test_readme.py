"""The README's quickstart is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert len(blocks) == 2 and all(b.startswith("python3 -m venv .venv") for b in blocks)
    assert blocks[1] in (ROOT / ".ci" / "run").read_text()


def _section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_passes_table_lists_every_registered_pass_with_its_kind():
    import re

    from lcc.passes import REGISTRY

    rows = [line.split(" | ") for line in _section("Passes").splitlines() if line.startswith("| `")]
    table = {re.match(r"\| `([a-z0-9-]+)", row[0]).group(1): row[1] for row in rows}
    assert len(table) == len(rows)  # one row per pass
    assert sorted(table) == sorted(REGISTRY)
    for name, kind in table.items():
        assert kind.split()[0] == ("exact" if REGISTRY[name].exact else "approximate"), name


def test_layout_names_every_package_and_top_level_module():
    lines = [line.split()[0] for line in _section("Layout").splitlines() if line.startswith("lcc/")]
    lcc_dir = ROOT / "lcc"
    want = {f"lcc/{p.name}" for p in lcc_dir.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    want |= {f"lcc/{p.name}" for p in lcc_dir.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(want - set(lines)) == [] and sorted(set(lines) - want) == []
    nested = [line.split()[0] for line in _section("Layout").splitlines() if line.startswith("  ")]
    assert {"backends/onnx", "backends/tvm", "backends/triton", "ops/masks"} <= set(nested)


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist(requirement: str) -> str:
    import re

    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


# base dependencies lcc does not import itself, and who needs them (checked in a fresh venv: without
# accelerate, transformers refuses to load a GGUF file, the embedded default model's only source)
NEEDED_BY_LIBRARIES = {"accelerate": "transformers' GGUF loader"}


def test_every_base_dependency_is_imported_by_lcc():
    import re

    source = "\n".join(p.read_text() for p in (ROOT / "lcc").rglob("*.py"))
    for dist in map(_dist, _pyproject()["project"]["dependencies"]):
        if dist in NEEDED_BY_LIBRARIES:
            continue
        assert re.search(rf"^\s*(import|from) {dist.replace('-', '_')}\b", source, re.M), f"{dist} is never imported"


def test_cpu_and_cuda_onnxruntime_are_alternative_extras():
    extras = _pyproject()["project"]["optional-dependencies"]
    base = {_dist(r) for r in _pyproject()["project"]["dependencies"]}
    cpu, cuda = {_dist(r) for r in extras["onnx"]}, {_dist(r) for r in extras["cuda"]}
    assert "onnxruntime" in cpu and "onnxruntime-gpu" in cuda and not ({"onnxruntime", "onnxruntime-gpu"} & base)
    assert not any(cuda & {_dist(r) for r in extras[name]} for name in extras if name != "cuda")
    assert "triton" not in base and "triton" in {_dist(r) for r in extras["test"]}
    readme = (ROOT / "README.md").read_text()
    assert all(f"lcc[{name}]" in readme for name in ("onnx", "cuda", "tvm", "triton"))
