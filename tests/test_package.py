"""The package surface: version, typed marker, curated exports, light import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gradguard as gg

HEAVY = ("matplotlib", "rich", "tensorboard", "lightning", "transformers", "typer")


def test_version_and_typed_marker() -> None:
    assert gg.__version__.count(".") == 2
    assert (Path(gg.__file__).parent / "py.typed").exists()


def test_all_lists_only_real_names() -> None:
    assert sorted(set(gg.__all__)) == sorted(gg.__all__)
    for name in gg.__all__:
        assert hasattr(gg, name), name


def test_the_torch_drop_ins_are_exported() -> None:
    assert {"clip_grad_norm_", "clip_grad_value_"} <= set(gg.__all__)
    assert gg.clip_grad_norm_ is gg.clip.clip_grad_norm_
    assert gg.clip_grad_value_ is gg.clip.clip_grad_value_


def test_import_loads_no_display_or_integration_package() -> None:
    code = f"import sys, gradguard; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
