"""What a scenario is, and the plain training loop that runs one and finds where it diverged."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeAlias

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from gradguard.errors import ConfigError
from gradguard.stats import measure

__all__ = [
    "DIVERGENCE_FACTOR",
    "EARLY_STEPS",
    "Batch",
    "Hook",
    "Kind",
    "Scenario",
    "Trace",
    "TrainingRun",
    "generator",
    "mse",
    "train",
]

Batch: TypeAlias = tuple[Tensor, Tensor]
Kind: TypeAlias = Literal["sudden", "gradual", "healthy"]

DIVERGENCE_FACTOR = 1e4
"""A finite loss above this many times the early median loss counts as divergence."""

EARLY_STEPS = 10
"""The median of the losses of the first this-many steps is the early reference."""


def mse(model: nn.Module, batch: Batch) -> Tensor:
    """Mean squared error of ``model`` on an ``(inputs, targets)`` batch: the scenarios' loss."""
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for the data of one step: the batch depends only on (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclasses.dataclass
class TrainingRun:
    """A fresh model, optimizer and data stream that any training loop can drive.

    Example::

        run = scenario.build(seed=0)
        for step in range(scenario.steps):
            run.optimizer.zero_grad()
            loss = run.compute_loss(step)
            loss.backward()
            run.optimizer.step()
            run.step_scheduler()

    Attributes:
        model: the module being trained.
        optimizer: its optimizer.
        batch_fn: ``step -> (inputs, targets)``, deterministic in the step.
        loss_fn: ``(model, batch) -> scalar loss``.
        scheduler: a learning-rate scheduler stepped once per optimizer step, or ``None``.
    """

    model: nn.Module
    optimizer: Optimizer
    batch_fn: Callable[[int], Batch]
    loss_fn: Callable[[nn.Module, Batch], Tensor]
    scheduler: LRScheduler | None = None

    def batch(self, step: int) -> Batch:
        """The inputs and targets of optimizer step ``step``."""
        return self.batch_fn(step)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The scalar loss of ``model`` on ``batch``."""
        return self.loss_fn(model, batch)

    def compute_loss(self, step: int) -> Tensor:
        """Forward pass of this run's model on the batch of ``step``."""
        return self.loss_fn(self.model, self.batch_fn(step))

    def step_scheduler(self) -> None:
        """Advance the learning-rate schedule by one step, when there is one."""
        if self.scheduler is not None:
            self.scheduler.step()


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A small seeded training run that explodes (or stays healthy) in a known way.

    Attributes:
        name: registry name.
        description: one sentence: the model, the cause, what happens.
        explodes: whether the unguarded run diverges within ``steps``.
        steps: optimizer steps the scenario is meant to run.
        kind: ``"sudden"`` (explodes within a few steps of its cause), ``"gradual"`` (the norm
            grows for tens of steps first) or ``"healthy"``.
        builder: ``seed -> TrainingRun``; use :meth:`build`.
        fault_free: for a scenario whose explosion is injected (a corrupted batch), the same run
            without the fault; use :meth:`build_fault_free`. ``None`` when the cause is built in.
    """

    name: str
    description: str
    explodes: bool
    steps: int
    kind: Kind
    builder: Callable[[int], TrainingRun] = dataclasses.field(repr=False, compare=False)
    fault_free: Callable[[int], TrainingRun] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def build(self, seed: int = 0) -> TrainingRun:
        """A fresh run; model initialisation uses ``seed`` without touching the global RNG."""
        return _seeded(self.builder, seed)

    def build_fault_free(self, seed: int = 0) -> TrainingRun | None:
        """The same run as :meth:`build` without its injected fault; ``None`` if it has none.

        It is the yardstick of a rescue: skipping the faulty step can at best reach it.
        """
        return None if self.fault_free is None else _seeded(self.fault_free, seed)


def _seeded(builder: Callable[[int], TrainingRun], seed: int) -> TrainingRun:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(seed)


@dataclasses.dataclass(frozen=True)
class Trace:
    """What one run of a scenario did, step by step.

    Attributes:
        scenario: the scenario's name.
        seed: the seed it was built with.
        losses: the loss of every step run.
        norms: the global gradient norm of every step run (before any hook clipped it).
        divergence_step: the first step whose loss or gradient was non-finite, whose loss
            exceeded ``DIVERGENCE_FACTOR`` times the early median loss, or after whose update a
            parameter was non-finite; ``None`` when the run never diverged.
    """

    scenario: str
    seed: int
    losses: tuple[float, ...]
    norms: tuple[float, ...]
    divergence_step: int | None

    @property
    def diverged(self) -> bool:
        """Whether the run diverged."""
        return self.divergence_step is not None

    @property
    def steps(self) -> int:
        """Number of optimizer steps run."""
        return len(self.losses)


class Hook(Protocol):
    """Called after ``backward`` each step; returns ``True`` if it already stepped the optimizer.

    A monitor returns ``None``/``False`` (the loop then steps); a guard that replaces
    ``optimizer.step()`` returns ``True``.
    """

    def __call__(self, run: TrainingRun, step: int, loss: Tensor) -> bool | None: ...


def train(
    scenario: Scenario,
    hook: Hook | None = None,
    *,
    seed: int = 0,
    steps: int | None = None,
    stop_at_divergence: bool = True,
) -> Trace:
    """Run ``scenario`` with a plain SGD-style loop, calling ``hook`` after each backward pass.

    Args:
        scenario: what to run.
        hook: optional per-step callback (a monitor, a guard, a clipper); see :class:`Hook`.
        seed: seed for :meth:`Scenario.build`.
        steps: how many steps to run (default ``scenario.steps``).
        stop_at_divergence: stop right after the divergence step (nothing useful follows).

    Returns:
        The :class:`Trace` of losses, norms and the divergence step.

    Raises:
        ConfigError: ``steps`` is negative.
    """
    total = scenario.steps if steps is None else steps
    if total < 0:
        raise ConfigError(f"steps must be >= 0, got {steps!r}.")
    run = scenario.build(seed)
    params = [p for p in run.model.parameters() if p.requires_grad]
    losses: list[float] = []
    norms: list[float] = []
    divergence: int | None = None
    for step in range(total):
        run.optimizer.zero_grad(set_to_none=True)
        loss = run.compute_loss(step)
        torch.autograd.backward(loss)
        # HOST SYNC: scenario bookkeeping, outside gradguard's hot path.
        norm = float(measure(params).total_norm.item())
        value = float(loss.detach().item())
        stepped = hook(run, step, loss) if hook is not None else None
        if not stepped:
            run.optimizer.step()
            run.step_scheduler()
        losses.append(value)
        norms.append(norm)
        if divergence is None and _diverged(losses, norm, params):
            divergence = step
            if stop_at_divergence:
                break
    return Trace(scenario.name, seed, tuple(losses), tuple(norms), divergence)


def _diverged(losses: list[float], norm: float, params: Sequence[Tensor]) -> bool:
    loss = losses[-1]
    if not (math.isfinite(loss) and math.isfinite(norm)):
        return True
    early = [v for v in losses[: min(len(losses) - 1, EARLY_STEPS)] if math.isfinite(v)]
    if early and loss > DIVERGENCE_FACTOR * abs(statistics.median(early)):
        return True
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
    return not bool(finite)
