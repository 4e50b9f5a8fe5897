"""Monitor: turn each step's gradients and loss into alerts, with one host transfer per step.

The Monitor only watches; it never changes gradients or weights. Call :meth:`Monitor.observe`
after ``loss.backward()`` and before ``optimizer.step()``. The Guard builds on it: it measures
once, hands its :class:`~gradguard.stats.GradStats` to ``observe(stats=...)`` and acts on the
returned alerts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from gradguard.detect import Detector, Preset
from gradguard.detect import preset as make_preset
from gradguard.detect.base import check_int
from gradguard.detect.episode import IncidentLatch
from gradguard.errors import (
    ConfigError,
    ConfigTypeError,
    check_bool,
    check_mapping,
    check_objects,
)
from gradguard.records import (
    ActionKind,
    Alert,
    AlertKind,
    Observation,
    Reason,
    Severity,
    StepRecord,
    from_json_dict,
    most_severe,
    reason_for,
    to_json_dict,
)
from gradguard.sinks import Sink
from gradguard.stats import (
    GradStats,
    NamedTensors,
    Parameters,
    check_norm_type,
    measure,
    named_tensors,
)
from gradguard.stats import observe as observe_step
from gradguard.stats import param_norm as measure_param_norm
from gradguard.stats.reduce import (
    holds_dtensor,
    is_distributed,
    mean_across_ranks,
    reduce_across_ranks,
    reduce_norm_across_ranks,
)

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["History", "Monitor"]

_MAX_CULPRIT_NAMES = 1024
_STATE_KEYS = (
    "step", "detectors", "counts", "first_alert", "first_critical", "max_norm",
    "nonfinite_steps", "culprits", "observations", "alerts", "last",
)  # fmt: skip


def check_sinks(sinks: object) -> tuple[Sink, ...]:
    """``sinks`` as a tuple, each checked up front to have ``write(record)`` and ``close()``."""
    fix = "Use gg.ConsoleSink(), gg.JsonlSink(path), or any object with write(record) and close()."
    return check_objects("sinks", sinks, ("write", "close"), fix=fix)


@dataclasses.dataclass(frozen=True)
class History:
    """The most recent observations and alerts a :class:`Monitor` kept (oldest first).

    Attributes:
        observations: the last observations (without the full per-tensor norm lists).
        alerts: the last alerts, of every severity.
    """

    observations: tuple[Observation, ...]
    alerts: tuple[Alert, ...]


class Monitor:
    """Watch a training run and warn before it diverges.

    Each :meth:`observe` measures the gradients on the device (unless given ``stats``), copies
    what the detectors need to the host in one transfer, runs the detectors, writes one
    :class:`~gradguard.records.StepRecord` (action ``proceed``) to every sink, and advances
    :attr:`step`. Memory is bounded: detectors keep ring buffers, and the monitor keeps the last
    ``history_size`` observations and alerts plus fixed-size counters.

    Example::

        monitor = gg.Monitor(model)
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            for alert in monitor.observe(loss):
                print(alert.message)
            optimizer.step()

    Args:
        model: the module, or the parameters, to watch.
        preset: the detector set: ``"default"`` (robust, quiet on healthy runs), ``"strict"``
            (more sensitive) or ``"textbook"`` (the textbook five-strategy monitor).
        detectors: your own detector list; replaces ``preset`` when given.
        sinks: where to write one record per step (console, JSONL, ...).
        top_k: how many of the largest per-tensor norms each observation names.
        norm_type: p of the p-norm for gradients and parameters.
        history_size: how many recent observations and alerts :attr:`history` keeps.
        process_group: in a distributed run, the group whose ranks train together (``None``:
            the default group). When ``torch.distributed`` is initialised with more than one
            rank, the gradient norms, the loss (averaged) and the parameter norm are reduced
            across it before the one host transfer, so every rank gets the same observation.
        sharded_grads: ``True`` when each rank holds a shard of every gradient (FSDP2, ZeRO),
            ``False`` when gradients are replicated (DDP); ``None`` detects it: sharded when
            any watched parameter is a ``DTensor``.

    Raises:
        ConfigError: an unknown preset, or an argument out of range.
        TypeError: a detector lacks ``name``/``update``/``state_dict``/``load_state_dict``.
    """

    def __init__(
        self,
        model: Parameters,
        *,
        preset: Preset = "default",
        detectors: Sequence[Detector] | None = None,
        sinks: Sequence[Sink] = (),
        top_k: int = 5,
        norm_type: float | str = 2.0,
        history_size: int = 256,
        process_group: ProcessGroup | None = None,
        sharded_grads: bool | None = None,
    ) -> None:
        self._params = named_tensors(model)
        self.process_group = process_group
        if sharded_grads is not None:
            check_bool("sharded_grads", sharded_grads, fix="Or None to detect DTensor shards.")
        self.sharded_grads = (
            holds_dtensor(t for _, t in self._params)
            if sharded_grads is None
            else bool(sharded_grads)
        )
        if detectors is not None:
            check_objects("detectors", detectors, ("update", "state_dict", "load_state_dict"))
        self.detectors: list[Detector] = (
            make_preset(preset) if detectors is None else list(detectors)
        )
        for detector in self.detectors:
            if not isinstance(detector, Detector):
                raise ConfigTypeError(
                    f"detectors must have name, update(obs), state_dict() and "
                    f"load_state_dict(state); got {detector!r:.80}. Use the classes in "
                    "gradguard.detect or implement that interface."
                )
        self._initial_detectors = copy.deepcopy(self.detector_state())
        self.sinks = check_sinks(sinks)
        self.top_k = check_int("top_k", top_k, minimum=0, fix="The default is 5.")
        self.norm_type = check_norm_type(norm_type)
        size = check_int("history_size", history_size, minimum=1)
        self._param_every = _schedules(self.detectors, "param_norm_every")
        self._tensor_every = _schedules(self.detectors, "tensor_norms_every")
        self._observations: deque[Observation] = deque(maxlen=size)
        self._alerts: deque[Alert] = deque(maxlen=size)
        self._latch = IncidentLatch()  # marks an incident's later alerts as repeats
        self._step = 0
        self._last: Observation | None = None
        self._counts: dict[str, dict[str, int]] = {}  # every alert, repeats included
        self._repeats: dict[str, dict[str, int]] = {}  # the repeats among them
        self._first_alert: int | None = None
        self._first_critical: int | None = None
        self._max_norm: float | None = None
        self._nonfinite_steps = 0
        self._culprits: dict[str, int] = {}

    @property
    def step(self) -> int:
        """Index of the next optimizer step to observe (the number observed so far)."""
        return self._step

    @property
    def last(self) -> Observation | None:
        """The latest observation, or ``None`` before the first :meth:`observe`."""
        return self._last

    @property
    def history(self) -> History:
        """The most recent observations and alerts (bounded)."""
        return History(tuple(self._observations), tuple(self._alerts))

    def measure(
        self, tensors: NamedTensors | None = None, *, norm_type: float | None = None
    ) -> GradStats:
        """This step's gradient statistics on the device, global across the ranks.

        Reduces the norms with the same rule as :meth:`watch` (a reduced measurement is not
        reduced again), so a caller that clips before the observation, as the guard does, clips
        by the global norm: every rank then clips and decides alike. No host synchronisation.

        Args:
            tensors: the named tensors to measure; ``None`` for the monitored parameters.
            norm_type: p of the p-norm; ``None`` for the monitor's.
        """
        p = self.norm_type if norm_type is None else norm_type
        stats = measure(self._params if tensors is None else tensors, p)
        return reduce_across_ranks(stats, self.process_group, sharded=self.sharded_grads)

    def observe(
        self,
        loss: Tensor | float | None = None,
        *,
        stats: GradStats | None = None,
        clip_coef: Tensor | float | None = None,
    ) -> list[Alert]:
        """Observe one optimizer step: measure, transfer once, detect, record.

        Call it after ``loss.backward()`` and before ``optimizer.step()``. The observation
        itself is :attr:`last`; :meth:`watch` returns both.

        Args:
            loss: the loss of this step (a tensor on any device, a number, or ``None``).
            stats: gradients already measured this step (the Guard passes its own so nothing is
                measured twice); ``None`` to measure the monitored parameters now.
            clip_coef: a one-element device tensor (or a number) that rides along in the same
                transfer and lands in ``last.clip_coef``; the Guard passes its clipper's
                coefficient here so that reading it costs no second host sync.

        Returns:
            The alerts raised at this step, in detector order (empty when healthy).

        Raises:
            NoGradientsError: no monitored parameter has a gradient (call backward first).
        """
        return self.watch(loss, stats=stats, clip_coef=clip_coef)[1]

    def watch(
        self,
        loss: Tensor | float | None = None,
        *,
        stats: GradStats | None = None,
        clip_coef: Tensor | float | None = None,
    ) -> tuple[Observation, list[Alert]]:
        """:meth:`observe`, returning the step's observation with its alerts (for the guard).

        Raises:
            NoGradientsError: no monitored parameter has a gradient (call backward first).
        """
        step = self._step
        if stats is None:
            stats = measure(self._params, self.norm_type)
        elif not isinstance(stats, GradStats):
            raise ConfigTypeError(
                f"stats must be this step's gg.measure(...) result or None, got "
                f"{type(stats).__name__} {stats!r:.60}."
            )
        weights = None
        if any(step % every == 0 for every in self._param_every):
            weights = measure_param_norm(self._params, self.norm_type)
        if is_distributed(self.process_group):  # same observation, hence decision, on all ranks
            group, sharded = self.process_group, self.sharded_grads
            stats = reduce_across_ranks(stats, group, sharded=sharded)  # unless given reduced
            if loss is not None:
                loss = mean_across_ranks(loss, group, device=stats.device)
            if weights is not None:
                weights = reduce_norm_across_ranks(weights, self.norm_type, group, sharded=sharded)
        want_all = any(step % every == 0 for every in self._tensor_every)
        obs = observe_step(
            stats,
            loss,
            step,
            top_k=self.top_k,
            param_norm=weights,
            want_tensor_norms=want_all,
            clip_coef=clip_coef,
        )
        alerts: list[Alert] = []
        for detector in self.detectors:
            alerts.extend(detector.update(obs))
        alerts = self._latch.mark(step, alerts)
        self._remember(obs, alerts)
        if self.sinks:
            record = self._record(obs, alerts)
            for sink in self.sinks:
                sink.write(record)
        self._step = step + 1
        return obs, alerts

    def summary(self) -> dict[str, Any]:
        """What the run looked like so far, as plain data.

        Alerts are counted as a person is told them: an incident once, not its repeats (the
        alerts :class:`~gradguard.detect.episode.IncidentLatch` marked ``repeat``).

        Returns:
            A dict with ``steps``; ``alerts`` (alerts that are not repeats: one per incident,
            plus info alerts); ``alerts_with_repeats`` (every alert raised, repeats included);
            ``counts`` (kind -> severity -> count of non-repeats), ``by_kind`` and
            ``by_severity`` (the same, summed per kind and per severity; kinds that only
            repeated are left out); ``first_alert_step`` (first warning or critical alert) and
            ``first_critical_step``; ``max_norm`` (largest finite global norm);
            ``nonfinite_steps``; ``culprits`` (tensor names most often blamed, most blamed
            first); and ``healthy`` (no warning or critical alert so far).
        """
        counts: dict[str, dict[str, int]] = {}
        for kind, per in self._counts.items():
            repeats = self._repeats.get(kind, {})
            told = {
                sev: n - repeats.get(sev, 0) for sev, n in per.items() if n > repeats.get(sev, 0)
            }
            if told:
                counts[kind] = told
        by_kind = {kind: sum(per.values()) for kind, per in counts.items()}
        by_severity: dict[str, int] = {}
        for per in counts.values():
            for severity, count in per.items():
                by_severity[severity] = by_severity.get(severity, 0) + count
        ranked = sorted(self._culprits.items(), key=lambda item: (-item[1], item[0]))
        return {
            "steps": self._step,
            "alerts": sum(by_kind.values()),
            "alerts_with_repeats": sum(sum(per.values()) for per in self._counts.values()),
            "counts": counts,
            "by_kind": by_kind,
            "by_severity": by_severity,
            "first_alert_step": self._first_alert,
            "first_critical_step": self._first_critical,
            "max_norm": self._max_norm,
            "nonfinite_steps": self._nonfinite_steps,
            "culprits": [name for name, _ in ranked[:5]],
            "healthy": self._first_alert is None,
        }

    def close(self) -> None:
        """Close every sink (call once when the run ends)."""
        for sink in self.sinks:
            sink.close()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume monitoring exactly: step, counters, history, detectors."""
        return {
            "step": self._step,
            "detectors": self.detector_state(),
            "counts": {kind: dict(per) for kind, per in self._counts.items()},
            "repeats": {kind: dict(per) for kind, per in self._repeats.items()},
            "first_alert": self._first_alert,
            "first_critical": self._first_critical,
            "max_norm": self._max_norm,
            "nonfinite_steps": self._nonfinite_steps,
            "culprits": dict(self._culprits),
            "observations": [to_json_dict(o) for o in self._observations],
            "alerts": [to_json_dict(a) for a in self._alerts],
            "last": None if self._last is None else to_json_dict(self._last),
            "latch": self._latch.state_dict(),
        }

    def detector_state(self) -> list[dict[str, Any]]:
        """What the detectors learned (their baselines), without the run's history: small."""
        return [{"name": d.name, "state": d.state_dict()} for d in self.detectors]

    def reset_detectors(self) -> None:
        """Put every detector back as it was when the monitor was built (baselines relearned).

        Run-level memory a detector keeps across rollbacks (``keep_on_rollback``) stays too.
        """
        self.load_detector_state(copy.deepcopy(self._initial_detectors), rollback=True)

    def load_detector_state(
        self, state: Sequence[Mapping[str, Any]], *, rollback: bool = False
    ) -> None:
        """Restore :meth:`detector_state`; the run's history and counters stay as they are.

        With ``rollback=True`` (the guard restoring a snapshot) the state a detector lists in
        its optional ``keep_on_rollback`` attribute stays live: run-level memory, such as the
        highest loss level seen, that the restored weights do not undo.

        Raises:
            ConfigError: the saved detectors differ from this monitor's.
        """
        if not isinstance(state, list) or not all(
            isinstance(entry, Mapping) and {"name", "state"} <= set(entry) for entry in state
        ):
            raise ConfigTypeError(
                f"the detector state must be the list Monitor.detector_state() returned, got "
                f"{state!r:.80}."
            )
        saved = [entry["name"] for entry in state]
        mine = [d.name for d in self.detectors]
        if saved != mine:
            raise ConfigError(
                f"the saved monitor state has detectors {saved!r} but this monitor has {mine!r}. "
                "Build the Monitor with the same preset or detector list before loading."
            )
        for detector, entry in zip(self.detectors, state, strict=True):
            keep = getattr(detector, "keep_on_rollback", ()) if rollback else ()
            if keep:
                live = detector.state_dict()
                detector.load_state_dict({**entry["state"], **{k: live[k] for k in keep}})
            else:
                detector.load_state_dict(entry["state"])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the detectors must be the same kinds, in the same order.

        Raises:
            ConfigError: the saved detectors differ from this monitor's.
        """
        fix = "Pass the whole dict that Monitor.state_dict() returned."
        check_mapping("state", state, fix=fix)
        missing = sorted(set(_STATE_KEYS) - set(state))
        if missing:
            raise ConfigError(f"the monitor state lacks {missing!r}. {fix}")
        self.load_detector_state(state["detectors"])
        if "latch" in state:
            self._latch.load_state_dict(state["latch"])
        self._step = int(state["step"])
        self._counts = _nested_counts(state["counts"])
        # A state saved before repeats were counted apart has none: its alerts all count.
        self._repeats = _nested_counts(state.get("repeats", {}))
        self._first_alert = state["first_alert"]
        self._first_critical = state["first_critical"]
        self._max_norm = state["max_norm"]
        self._nonfinite_steps = int(state["nonfinite_steps"])
        self._culprits = {str(k): int(v) for k, v in state["culprits"].items()}
        self._observations.clear()
        self._observations.extend(from_json_dict(Observation, o) for o in state["observations"])
        self._alerts.clear()
        self._alerts.extend(from_json_dict(Alert, a) for a in state["alerts"])
        last = state["last"]
        self._last = None if last is None else from_json_dict(Observation, last)

    def _remember(self, obs: Observation, alerts: list[Alert]) -> None:
        self._last = obs
        kept = obs if obs.tensor_norms is None else dataclasses.replace(obs, tensor_norms=None)
        self._observations.append(kept)
        self._alerts.extend(alerts)
        if obs.finite and math.isfinite(obs.total_norm):
            if self._max_norm is None or obs.total_norm > self._max_norm:
                self._max_norm = obs.total_norm
        else:
            self._nonfinite_steps += 1
        for alert in alerts:
            per = self._counts.setdefault(alert.kind.value, {})
            per[alert.severity.value] = per.get(alert.severity.value, 0) + 1
            if alert.repeat:
                per = self._repeats.setdefault(alert.kind.value, {})
                per[alert.severity.value] = per.get(alert.severity.value, 0) + 1
            if alert.severity is not Severity.INFO:
                if self._first_alert is None:
                    self._first_alert = obs.step
                if alert.severity is Severity.CRITICAL and self._first_critical is None:
                    self._first_critical = obs.step
            if alert.severity is not Severity.INFO or alert.kind is AlertKind.CULPRIT:
                for name in alert.culprits:
                    if name in self._culprits or len(self._culprits) < _MAX_CULPRIT_NAMES:
                        self._culprits[name] = self._culprits.get(name, 0) + 1

    def _record(self, obs: Observation, alerts: list[Alert]) -> StepRecord:
        worst = most_severe(alerts)
        return StepRecord(
            step=obs.step,
            action=ActionKind.PROCEED,
            reason=Reason.HEALTHY if worst is None else reason_for(worst.kind),
            message="" if worst is None else worst.message,
            applied=True,
            loss=obs.loss,
            total_norm=obs.total_norm,
            alerts=tuple(alerts),
            top=obs.top,
        )

    def __repr__(self) -> str:
        names = ", ".join(d.name for d in self.detectors)
        return f"Monitor(step={self._step}, detectors=[{names}], tensors={len(self._params)})"


def _nested_counts(saved: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Kind -> severity -> count as saved in a state dict, with the counts made ints."""
    return {str(k): {str(s): int(n) for s, n in v.items()} for k, v in saved.items()}


def _schedules(detectors: Sequence[Detector], attribute: str) -> tuple[int, ...]:
    """The distinct periods (in steps) at which some detector wants ``attribute`` measured."""
    periods = {getattr(d, attribute, None) for d in detectors}
    return tuple(sorted(p for p in periods if isinstance(p, int) and p >= 1))
