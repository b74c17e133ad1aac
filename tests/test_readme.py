"""The README's quickstart is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert len(blocks) == 2 and all(b.startswith("python3 -m venv .venv") for b in blocks)
    assert blocks[1] in (ROOT / ".ci" / "run").read_text()
