"""The few words the console and the logging sink use for what the guard did, and when it shows."""

from __future__ import annotations

from gradguard.records import ActionKind, Reason, StepRecord
from gradguard.sinks.tally import done_phrase, is_shown_intervention


def _record(action: ActionKind, reason: Reason) -> StepRecord:
    return StepRecord(step=7, action=action, reason=reason, message="m", applied=False)


def test_a_skip_that_undid_its_rollback_does_not_claim_the_weights_were_unchanged() -> None:
    undone = done_phrase(_record(ActionKind.SKIP, Reason.REGIME_CHANGE))
    assert "undid its rollback" in undone and "unchanged" not in undone
    plain = done_phrase(_record(ActionKind.SKIP, Reason.LOSS_SPIKE))
    assert plain == "skipped the step (weights unchanged)"


def test_only_a_non_routine_action_beyond_clipping_is_shown_as_an_intervention() -> None:
    shown = {
        (action, reason): is_shown_intervention(_record(action, reason))
        for action, reason in [
            (ActionKind.PROCEED, Reason.HEALTHY),
            (ActionKind.CLIP, Reason.SPIKE),
            (ActionKind.SKIP, Reason.LOSS_SPIKE),
            (ActionKind.SKIP, Reason.SCALER_OVERFLOW),
            (ActionKind.ROLLBACK, Reason.REPEATED_FAULTS),
        ]
    }
    assert shown == {
        (ActionKind.PROCEED, Reason.HEALTHY): False,
        (ActionKind.CLIP, Reason.SPIKE): False,
        (ActionKind.SKIP, Reason.LOSS_SPIKE): True,
        (ActionKind.SKIP, Reason.SCALER_OVERFLOW): False,  # routine: counted, not shown
        (ActionKind.ROLLBACK, Reason.REPEATED_FAULTS): True,
    }
