"""Every ```python block of README.md runs: each in a fresh namespace, inside a temporary folder.

Of the bash blocks, every ``gradguard ...`` line is run as a subprocess; ``make demo`` and
``make test`` are what CI itself runs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of each fenced python block of a markdown text."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3
    sample = "text\n```python\nx = 1\n```\n```bash\nls\n```\n```python title\ny = 2\n```\n"
    assert python_blocks(sample) == [(2, "x = 1\n"), (8, "y = 2\n")]


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(
    line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"readme_block_{line}"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)


_SHELL_FENCE = re.compile(r"^```bash[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
REPO = README.parent


def gradguard_commands(text: str) -> list[str]:
    """Every ``gradguard ...`` command line of the bash blocks, without its trailing comment."""
    lines = (line for m in _SHELL_FENCE.finditer(text) for line in m.group(1).splitlines())
    return [line.split("  #")[0].strip() for line in lines if line.startswith("gradguard ")]


COMMANDS = gradguard_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_both_setup_commands_and_cli_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text
    assert "make test" in text
    assert len(COMMANDS) >= 3


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command: str, tmp_path: Path) -> None:
    """Each CLI line of the README exits 0 when run from a scratch folder."""
    argv = [str(REPO / a) if a.startswith("examples/") else a for a in shlex.split(command)]
    exe = Path(sys.executable).parent / "gradguard"
    done = subprocess.run(
        [str(exe), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_readme_make_demo_writes_the_report() -> None:
    """The README's first command, as a newcomer runs it: the demo ends with the HTML report."""
    text = README.read_text(encoding="utf-8")
    assert re.search(r"^make demo\b", text, re.MULTILINE)
    done = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "report: gradguard-demo/report.html" in done.stdout
    assert (REPO / "gradguard-demo" / "report.html").stat().st_size > 10_000
