"""The few words the console and the logging sink use for what the guard did."""

from __future__ import annotations

from gradguard.records import ActionKind, Reason, StepRecord
from gradguard.sinks.tally import done_phrase


def _record(action: ActionKind, reason: Reason) -> StepRecord:
    return StepRecord(step=7, action=action, reason=reason, message="m", applied=False)


def test_a_skip_that_undid_its_rollback_does_not_claim_the_weights_were_unchanged() -> None:
    undone = done_phrase(_record(ActionKind.SKIP, Reason.REGIME_CHANGE))
    assert "undid its rollback" in undone and "unchanged" not in undone
    plain = done_phrase(_record(ActionKind.SKIP, Reason.LOSS_SPIKE))
    assert plain == "skipped the step (weights unchanged)"
