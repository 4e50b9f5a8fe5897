"""gradguard.analysis and gradguard.remedies: exported, JSON-friendly results.

(``tests/test_package.py`` checks that ``import gradguard``, which imports both, loads no display
package.)
"""

from __future__ import annotations

import json

import torch

import gradguard as gg
from gradguard import analysis, remedies


def test_submodules_are_exposed() -> None:
    assert gg.analysis is analysis and gg.remedies is remedies
    assert "analysis" in gg.__all__ and "remedies" in gg.__all__
    for module in (analysis, remedies):
        assert sorted(module.__all__) == sorted(set(module.__all__))
        for name in module.__all__:
            assert hasattr(module, name), name


def test_every_result_is_strict_json_with_its_kind() -> None:
    results = [
        analysis.explosion_table([0.9, 1.5]),
        analysis.recurrent_report(torch.nn.GRU(2, 3)),
        analysis.eigen_dynamics(1.1 * torch.eye(3), 5),
    ]
    for result in results:
        data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        assert data["kind"] == result.kind
        assert str(result)
