"""The README's Python example runs as written, and CI runs the README's set-up commands, no more, no fewer."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_ci_runs_exactly_the_readmes_set_up_commands():
    """One command for the main job, one for the tests; .ci/run runs those (the main job with its smoke preset)."""
    set_up = (ROOT / "README.md").read_text().split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", set_up, flags=re.S).group(1)
    readme = [line.split("#")[0].strip() for line in block.splitlines()]
    assert readme == ["make quickstart", "make test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test", "make quickstart ARGS=--fast"]


def test_make_installs_the_cpu_torch_wheel_before_anything_else():
    makefile = (ROOT / "Makefile").read_text()
    install = re.search(r"^install: .*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1).splitlines()
    assert install[0].strip() == "$(PIP) $(TORCH)" and "TORCH := torch==2.13.0" in makefile


def test_the_readme_stays_short():
    """Users read the README; run history lives in eval/BENCHMARKS.md, details in the recipe READMEs."""
    assert len((ROOT / "README.md").read_bytes()) <= 12_000
