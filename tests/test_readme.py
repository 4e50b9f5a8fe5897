"""Every ```python block of README.md runs: each in a fresh namespace, inside a temporary folder.

Bash blocks are not run here (``make demo`` and the commands have their own tests).
"""

from __future__ import annotations

import re
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
