"""A seeded family of small training runs (architecture x optimizer x learning rate x fault).

Fourteen hand-made runs are too few to tune defaults on without over-fitting them. This module
samples a larger family from one seeded RNG and splits it, once and for all, into a tuning half
and a validation half::

    from gradguard.scenarios import generate

    for spec in generate.generate("validate"):
        result = generate.run(spec, generate.plain)
        print(spec.id, result.initial, result.final)

Each spec's ``1x`` learning rate is a stable rate for its architecture and optimizer (a 1x run
without a fault trains); the multipliers (3x to 100x), schedules and faults push it from there.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeAlias, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from gradguard.errors import ConfigError, TrainingDivergedError
from gradguard.scenarios.base import Batch, TrainingRun, generator
from gradguard.scenarios.models import (
    CharGPT,
    SequenceRegressor,
    SmallCNN,
    TinyTransformer,
    deep_mlp,
    mlp,
)

__all__ = [
    "ARCHS",
    "EXPLODE_FACTOR",
    "FAULTS",
    "GRADUAL",
    "MULTIPLIERS",
    "OPTIMIZERS",
    "RUNAWAY_RATE",
    "SCHEDULES",
    "STEPS",
    "Arch",
    "Fault",
    "GeneratedRun",
    "GeneratedScenario",
    "Method",
    "OptimizerName",
    "Outcome",
    "RunResult",
    "Schedule",
    "Split",
    "Stepper",
    "base_lr",
    "base_rate_specs",
    "by_id",
    "classify",
    "generate",
    "incident_step",
    "plain",
    "run",
]

Arch: TypeAlias = Literal["mlp", "deepmlp", "cnn", "rnn", "lstm", "gru", "transformer", "gpt"]
OptimizerName: TypeAlias = Literal["sgd", "momentum", "adam", "adamw", "rmsprop", "lbfgs"]
Schedule: TypeAlias = Literal["constant", "warmup", "ramp", "restarts"]
Fault: TypeAlias = Literal[
    "none", "nan", "corrupt", "labelnoise", "infweight", "overflow", "runaway"
]
Split: TypeAlias = Literal["tune", "validate", "all"]

ARCHS: tuple[Arch, ...] = ("mlp", "deepmlp", "cnn", "rnn", "lstm", "gru", "transformer", "gpt")
OPTIMIZERS: tuple[OptimizerName, ...] = ("sgd", "momentum", "adam", "adamw", "rmsprop", "lbfgs")
SCHEDULES: tuple[Schedule, ...] = ("constant", "warmup", "ramp", "restarts")
FAULTS: tuple[Fault, ...] = ("none", "nan", "corrupt", "labelnoise", "infweight", "overflow")
"""The faults the sampler draws from (``runaway`` is not drawn: see :data:`GRADUAL`)."""
MULTIPLIERS: tuple[int, ...] = (1, 3, 10, 30, 100)

STEPS = 100
"""Optimizer steps of every generated run."""

EXPLODE_FACTOR = 2.0
"""An unguarded run whose final held-out loss exceeds this many times its initial one exploded."""

LABEL_NOISE_STEPS = 5
"""How many consecutive batches a ``labelnoise`` fault spoils."""

OVERFLOW_OFFSETS = (0, 9, 23)
"""Steps after ``fault_step`` whose scaled gradients overflow in an ``overflow`` run."""

RUNAWAY_RATE = 1.25
"""Growth per step of the loss weight of a ``runaway`` run after its fault (9.3x per 10 steps)."""

GRADUAL: tuple[tuple[Arch, OptimizerName], ...] = (
    ("mlp", "adam"),
    ("rnn", "sgd"),
    ("gru", "sgd"),
    ("cnn", "rmsprop"),
    ("transformer", "adamw"),
    ("gpt", "rmsprop"),
    ("deepmlp", "momentum"),
    ("lstm", "adamw"),
)
"""Architecture and optimizer of the ``runaway`` runs appended to the family, alternately to the
tuning and the validation half (each half gets an SGD-family run and an adaptive one).

The sampled runs explode within a few steps of their cause; these few explode gradually, so a
detector's lead on a slow explosion is measured too. They come after the sampled runs of each
half and draw nothing from the sampler, so every sampled run keeps its id and its half.
"""

FINAL_WINDOW = 10
"""The final loss is the median of the held-out losses after this many last steps."""

V = TypeVar("V")

_SGD_LR: dict[Arch, float] = {
    "mlp": 0.05,
    "deepmlp": 0.01,
    "cnn": 0.1,
    "rnn": 0.05,
    "lstm": 0.1,
    "gru": 0.1,
    "transformer": 0.01,
    "gpt": 0.1,
}
_ADAPTIVE_LR: dict[Arch, float] = dict.fromkeys(ARCHS, 1e-3) | {"cnn": 3e-3, "gpt": 3e-3}
_LBFGS_LR: dict[Arch, float] = dict.fromkeys(ARCHS, 0.1) | {"cnn": 0.01, "gpt": 0.03}


def base_lr(arch: Arch, optimizer: OptimizerName) -> float:
    """The ``1x`` learning rate of ``optimizer`` on ``arch``: one at which the run trains."""
    if optimizer == "sgd":
        return _SGD_LR[arch]
    if optimizer == "momentum":
        return _SGD_LR[arch] / 5.0  # heavy ball 0.9 takes ~10x the step of plain SGD
    if optimizer == "lbfgs":
        return _LBFGS_LR[arch]
    return _ADAPTIVE_LR[arch]


@dataclasses.dataclass(frozen=True)
class GeneratedScenario:
    """One sampled run: what to train, how hard to push it, and what goes wrong.

    Attributes:
        arch: the model and its synthetic task.
        optimizer: the optimizer (``momentum`` is SGD with heavy-ball 0.9).
        multiplier: the learning rate is ``multiplier`` times :func:`base_lr`.
        schedule: ``constant``; ``warmup`` (linear from 5 % over 30 steps); ``ramp`` (linear
            from 1x to ``multiplier`` x over the run); ``restarts`` (cosine, restarting every
            40 steps).
        fault: ``none``; ``nan`` (a NaN, or on odd seeds Inf, gradient at ``fault_step``);
            ``corrupt`` (one batch 1000x too large); ``labelnoise`` (labels replaced by noise
            for a few steps); ``infweight`` (one output-layer weight set to Inf); ``overflow``
            (a GradScaler whose scaled gradients overflow at a few steps); ``runaway`` (from
            ``fault_step`` on, the loss is weighted by :data:`RUNAWAY_RATE` to the power of the
            steps since: an auxiliary-loss weight or a manual loss scale on a schedule that never
            stops growing, so the gradients and the loss grow geometrically).
        seed: model initialisation and data; also the number after ``#`` in :attr:`id`.
        split: the half it belongs to.
        fault_step: the step the fault strikes (``-1`` without one).
        steps: optimizer steps to run.
    """

    arch: Arch
    optimizer: OptimizerName
    multiplier: int
    schedule: Schedule
    fault: Fault
    seed: int
    split: Literal["tune", "validate"]
    fault_step: int = -1
    steps: int = STEPS

    @property
    def id(self) -> str:
        """A stable readable name, e.g. ``"lstm-adam-x30-warmup-nan#3"``."""
        return (
            f"{self.arch}-{self.optimizer}-x{self.multiplier}-{self.schedule}-{self.fault}"
            f"#{self.seed}"
        )

    @property
    def expected_healthy(self) -> bool:
        """A 1x run without a fault: it must train, and a guard must leave it alone."""
        return self.multiplier == 1 and self.fault == "none"

    @property
    def lr(self) -> float:
        """The peak learning rate of the run."""
        return base_lr(self.arch, self.optimizer) * self.multiplier

    def build(self) -> GeneratedRun:
        """A fresh run; the model is initialised from :attr:`seed` without touching global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return _build(self)


# ------------------------------------------------------------------------------- the family
def generate(
    split: Split = "all", *, seed: int = 0, per_half: int = 32, gradual: bool = True
) -> list[GeneratedScenario]:
    """The generated family, or one half of it; the same list for the same ``seed``.

    Each half holds one healthy control per architecture (1x, no fault) and ``per_half - 8``
    sampled runs in which every architecture, optimizer, fault and multiplier recurs; about a
    quarter of them have no fault and a 30x or 100x rate (the rate alone is the cause). After
    them come half of the :data:`GRADUAL` runs (``runaway`` faults, slow explosions).

    Args:
        split: ``"tune"`` (defaults may be tuned on it), ``"validate"`` (check them here
            only) or ``"all"`` (tuning half first).
        seed: seed of the sampling RNG; the halves are fixed by it.
        per_half: runs per half (at least 2 * len(ARCHS) so that every value recurs).
        gradual: append the :data:`GRADUAL` runs; ``False`` gives the sampled runs only (the
            family as it was before they were added, for like-for-like comparisons).

    Raises:
        ConfigError: ``split`` is unknown or ``per_half`` too small.
    """
    if split not in ("tune", "validate", "all"):
        raise ConfigError(
            f"split must be 'tune', 'validate' or 'all', got {split!r}. Tune defaults on 'tune' "
            "and report 'validate'."
        )
    minimum = len(ARCHS) + len(FAULTS) * 2
    if isinstance(per_half, bool) or not isinstance(per_half, int) or per_half < minimum:
        raise ConfigError(
            f"per_half must be an integer >= {minimum} (so that every architecture, optimizer "
            f"and fault recurs in each half), got {per_half!r}. The default is 32."
        )
    rng = random.Random(seed)
    halves: list[list[GeneratedScenario]] = []
    names: tuple[Literal["tune"], Literal["validate"]] = ("tune", "validate")
    for half in names:
        halves.append(_half(rng, half, per_half, first_seed=sum(map(len, halves))))
    # Appended after sampling, so the sampled runs keep their ids, seeds and halves.
    first = sum(map(len, halves))
    for k, (arch, opt) in enumerate(GRADUAL if gradual else ()):
        half_k = k % 2
        fault_step = rng.randint(STEPS // 5, STEPS // 4)
        halves[half_k].append(
            GeneratedScenario(
                arch,
                opt,
                1,
                "constant",
                "runaway",
                first + k,
                names[half_k],
                fault_step=fault_step,
            )
        )
    specs = halves[0] + halves[1]
    return [s for s in specs if split in ("all", s.split)]


def by_id(run_id: str, *, seed: int = 0) -> GeneratedScenario:
    """The spec whose :attr:`~GeneratedScenario.id` is ``run_id`` in the family of ``seed``.

    Raises:
        ConfigError: no spec has that id.
    """
    for spec in generate(seed=seed):
        if spec.id == run_id:
            return spec
    raise ConfigError(
        f"no generated run is called {run_id!r} (family seed {seed!r}). List the ids with "
        "[s.id for s in generate()]."
    )


def base_rate_specs(seed: int = 0) -> list[GeneratedScenario]:
    """Every architecture x optimizer pair at 1x, constant rate, no fault: each must train.

    Not part of the family; ``benchmarks/rescue.py --check-1x`` runs them to verify
    :func:`base_lr` (``seed`` seeds the runs).
    """
    return [
        GeneratedScenario(arch, opt, 1, "constant", "none", seed, "tune")
        for arch in ARCHS
        for opt in OPTIMIZERS
    ]


def _cycle(rng: random.Random, values: Sequence[V], n: int) -> list[V]:
    """``n`` values in which every value appears ``n // len(values)`` or one more times."""
    out: list[V] = []
    while len(out) < n:
        chunk = list(values)
        rng.shuffle(chunk)
        out += chunk
    return out[:n]


def _half(
    rng: random.Random, half: Literal["tune", "validate"], n: int, first_seed: int
) -> list[GeneratedScenario]:
    rows: list[tuple[Arch, OptimizerName, int, Schedule, Fault]] = []
    control_opts = _cycle(rng, OPTIMIZERS, len(ARCHS))
    for arch, opt in zip(ARCHS, control_opts, strict=True):
        rows.append((arch, opt, 1, rng.choice(("constant", "warmup")), "none"))
    rest = n - len(ARCHS)
    archs = _cycle(rng, ARCHS, rest)
    opts = _cycle(rng, OPTIMIZERS, rest)
    faults = _cycle(rng, (*FAULTS, "none"), rest)  # "none" twice: the rate alone must explode
    for i in range(rest):
        # LBFGS takes a closure, which a GradScaler cannot step: move the overflow elsewhere.
        if opts[i] == "lbfgs" and faults[i] == "overflow":
            j = next(k for k in range(rest) if opts[k] != "lbfgs" and faults[k] != "overflow")
            faults[i], faults[j] = faults[j], faults[i]
    # Without a fault only a high rate makes a run go wrong: 30x or 100x, under every schedule.
    pure = iter(_cycle(rng, (30, 100), faults.count("none")))
    pure_schedules = iter(_cycle(rng, SCHEDULES, faults.count("none")))
    faulty = iter(_cycle(rng, MULTIPLIERS, rest - faults.count("none")))
    for i in range(rest):
        if faults[i] == "none":
            rows.append((archs[i], opts[i], next(pure), next(pure_schedules), "none"))
        else:
            mult = next(faulty)
            schedule: Schedule = rng.choice(SCHEDULES if mult > 1 else ("constant", "warmup"))
            rows.append((archs[i], opts[i], mult, schedule, faults[i]))
    specs = []
    for k, (arch, opt, mult, schedule, fault) in enumerate(rows):
        fault_step = rng.randint(STEPS // 3, 2 * STEPS // 3) if fault != "none" else -1
        specs.append(
            GeneratedScenario(
                arch, opt, mult, schedule, fault, first_seed + k, half, fault_step=fault_step
            )
        )
    return specs


# ------------------------------------------------------------------------------- one run
@dataclasses.dataclass
class GeneratedRun(TrainingRun):
    """A :class:`TrainingRun` whose :meth:`compute_loss` injects the spec's fault.

    Attributes:
        spec: what it was built from.
        heldout: a fixed batch the final loss is measured on (never trained on).
        scaler: a CPU ``GradScaler`` for ``overflow`` runs, else ``None``.
    """

    spec: GeneratedScenario | None = None
    heldout: Batch | None = None
    scaler: torch.amp.GradScaler | None = None

    def compute_loss(self, step: int) -> Tensor:
        """The training loss of step ``step``, with the spec's fault if it strikes then."""
        spec = self.spec
        x, y = self.batch_fn(step)
        if spec is None or spec.fault == "none":
            return self.loss_fn(self.model, (x, y))
        fault, at = spec.fault, step - spec.fault_step
        weight = 1.0
        if fault == "corrupt" and at == 0:
            if x.is_floating_point():  # a unit mix-up: the inputs (and float targets) x1000
                x, y = 1e3 * x, (1e3 * y if y.is_floating_point() else y)
            else:  # token ids cannot be scaled: the batch gets a 1000x loss weight instead
                weight = 1e3
        if fault == "labelnoise" and 0 <= at < LABEL_NOISE_STEPS:
            g = generator(spec.seed, 1_000_000 + step)
            if y.is_floating_point():
                y = y + 30.0 * torch.randn(y.shape, generator=g)
            else:
                y = torch.randint(0, int(y.max()) + 1, y.shape, generator=g)
        if fault == "runaway" and at >= 0:
            weight = RUNAWAY_RATE ** (at + 1)
        if fault == "infweight" and at == 0:
            with torch.no_grad():  # the output layer's last parameter: every output is Inf
                list(self.model.parameters())[-1].view(-1)[0] = math.inf
        model = self.model
        if (fault == "nan" and at == 0) or (fault == "overflow" and at in OVERFLOW_OFFSETS):
            model = _Poisoned(model, math.inf if fault == "overflow" or spec.seed % 2 else math.nan)
        loss = self.loss_fn(model, (x, y))
        return loss * weight if weight != 1.0 else loss

    def closure(self, step: int) -> Callable[[], Tensor]:
        """An LBFGS closure for step ``step``: zero the gradients, forward, backward."""

        def closure() -> Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.compute_loss(step)
            torch.autograd.backward(loss)
            return loss

        return closure

    def heldout_loss(self) -> float:
        """The loss on :attr:`heldout` (no gradient, no fault)."""
        if self.heldout is None:
            return math.nan
        with torch.no_grad():
            # HOST SYNC: scenario bookkeeping, outside gradguard's hot path.
            return float(self.loss_fn(self.model, self.heldout).item())


class _Poisoned(nn.Module):
    """Runs ``model``; the gradient flowing back into its first output element becomes ``value``.

    One bad element, as a bad kernel or an fp16 overflow would give: an Inf reaches the head's
    gradients as Inf, and turns into NaN where it meets opposite signs deeper down.
    """

    def __init__(self, model: nn.Module, value: float) -> None:
        super().__init__()
        self.model, self.value = model, value

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)
        out.register_hook(self._poison)  # type: ignore[no-untyped-call]
        return out

    def _poison(self, grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad.view(-1)[0] = self.value
        return grad


def _mse(model: nn.Module, batch: Batch) -> Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


def _cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    logits: Tensor = model(batch[0])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))


Sampler: TypeAlias = Callable[[torch.Generator, int], Batch]


def _task(arch: Arch, seed: int) -> tuple[nn.Module, Sampler, Callable[[nn.Module, Batch], Tensor]]:
    """The model, a ``(generator, batch size) -> batch`` sampler and the loss of ``arch``."""
    fixed = generator(seed, -1)  # the task's own constants, apart from every batch
    if arch in ("mlp", "deepmlp"):
        w = torch.randn(8, 1, generator=fixed)
        model = mlp(8, 32) if arch == "mlp" else deep_mlp(8, 32, 8, gain=math.sqrt(2.0))

        def regression(g: torch.Generator, n: int) -> Batch:
            x = torch.randn(n, 8, generator=g)
            return x, torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)

        return model, regression, _mse
    if arch == "cnn":
        prototypes = torch.randn(4, 1, 8, 8, generator=fixed)

        def images(g: torch.Generator, n: int) -> Batch:
            y = torch.randint(0, 4, (n,), generator=g)
            return prototypes[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), y

        return SmallCNN(), images, _cross_entropy
    if arch in ("rnn", "lstm", "gru"):
        cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[arch]

        def recall(g: torch.Generator, n: int) -> Batch:
            x = torch.randn(n, 16, 4, generator=g)
            return x, 0.5 * x[:, -4:, 1].sum(1, keepdim=True)

        return SequenceRegressor(cell(4, 32, batch_first=True), 32, last_only=True), recall, _mse
    if arch == "transformer":

        def peak(g: torch.Generator, n: int) -> Batch:
            x = torch.randn(n, 12, 4, generator=g)
            return x, x[..., 0].max(1, keepdim=True).values

        return TinyTransformer(), peak, _mse
    # gpt: text from a fixed Markov chain in which every token has two likely successors.
    vocab, context = 16, 12
    logits = torch.full((vocab, vocab), -4.0)
    succ = torch.randint(0, vocab, (vocab, 2), generator=fixed)
    logits.scatter_(1, succ, 2.0)
    probs = logits.softmax(1)

    def text(g: torch.Generator, n: int) -> Batch:
        tokens = [torch.randint(0, vocab, (n,), generator=g)]
        for _ in range(context):
            tokens.append(torch.multinomial(probs[tokens[-1]], 1, generator=g).squeeze(1))
        seq = torch.stack(tokens, 1)
        return seq[:, :-1], seq[:, 1:]

    return CharGPT(vocab, context, layers=1), text, _cross_entropy


def _optimizer(name: OptimizerName, model: nn.Module, lr: float) -> Optimizer:
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    # One function evaluation per step: one closure call, as cheap as a gradient step.
    return torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=10)


def _scheduler(spec: GeneratedScenario, optimizer: Optimizer) -> LRScheduler | None:
    if spec.schedule == "warmup":
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.05, total_iters=30)
    if spec.schedule == "ramp":
        m, last = float(spec.multiplier), spec.steps - 1
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (1.0 + (m - 1.0) * min(1.0, s / last)) / m
        )
    if spec.schedule == "restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=40)
    return None


def _build(spec: GeneratedScenario) -> GeneratedRun:
    model, sample, loss_fn = _task(spec.arch, spec.seed)
    optimizer = _optimizer(spec.optimizer, model, spec.lr)

    if spec.optimizer == "lbfgs":
        # A quasi-Newton method needs the same function every step: a fixed training batch.
        train = sample(generator(spec.seed, -3), 64)

        def batch(step: int) -> Batch:
            return train

    else:
        size = 32 if spec.arch in ("mlp", "deepmlp", "cnn") else 16

        def batch(step: int) -> Batch:
            return sample(generator(spec.seed, step), size)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16) if spec.fault == "overflow" else None
    return GeneratedRun(
        model,
        optimizer,
        batch,
        loss_fn,
        _scheduler(spec, optimizer),
        spec=spec,
        heldout=sample(generator(spec.seed, -2), 256),
        scaler=scaler,
    )


# ------------------------------------------------------------------------------- the runner
class Stepper(Protocol):
    """Does one optimizer step of a method, after the runner's backward pass.

    Gradient methods get the step's ``loss`` (already back-propagated, ``closure`` is
    ``None``); closure optimizers (LBFGS) get ``loss=None`` and a ``closure`` that zeroes the
    gradients, computes the loss and back-propagates. The stepper steps the optimizer, the
    scheduler and the scaler as its method does.
    """

    def __call__(self, loss: Tensor | None, closure: Callable[[], Tensor] | None) -> None: ...


Method: TypeAlias = Callable[[GeneratedRun], Stepper | None]
"""Builds a method's :class:`Stepper` for a fresh run; ``None`` when it cannot run it."""


def plain(run: GeneratedRun) -> Stepper:
    """No protection: ``optimizer.step()`` (through the scaler when there is one)."""

    def step(loss: Tensor | None, closure: Callable[[], Tensor] | None) -> None:
        if closure is not None:
            run.optimizer.step(closure)  # type: ignore[arg-type]
        elif run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.step_scheduler()

    return step


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one method did on one generated run.

    Attributes:
        id: the spec's id.
        status: ``"ok"``; ``"aborted"`` (the method raised ``TrainingDivergedError``; the
            losses stop there); ``"unsupported"`` (the method cannot drive this optimizer).
        losses: the training loss of every step run.
        initial: held-out loss of the untrained model.
        final: median of the finite held-out losses after the last :data:`FINAL_WINDOW` steps
            (at abort: the held-out loss then); NaN when none was finite.
        finite: the parameters are finite at the end and ``final`` is finite.
        divergence_step: the first step whose training loss was non-finite or above
            ``1e4`` times the initial held-out loss; ``None`` if none was.
        checksum: the sum of every parameter at the end (float64): equal for identical runs.
        seconds: wall time of the run.
        note: what the method reports about itself (a guard's counters).
    """

    id: str
    status: Literal["ok", "aborted", "unsupported"]
    losses: tuple[float, ...]
    initial: float
    final: float
    finite: bool
    divergence_step: int | None
    checksum: float
    seconds: float
    note: str = ""


def run(spec: GeneratedScenario, method: Method = plain) -> RunResult:
    """Train ``spec`` for its steps under ``method``; see :class:`RunResult`.

    A ``TrainingDivergedError`` from the method ends the run (``status="aborted"``).
    """
    start = time.perf_counter()
    built = spec.build()
    initial = built.heldout_loss()
    stepper = method(built)
    if stepper is None:
        return RunResult(spec.id, "unsupported", (), initial, math.nan, False, None, math.nan, 0.0)
    lbfgs = isinstance(built.optimizer, torch.optim.LBFGS)
    losses: list[float] = []
    finals: list[float] = []
    status: Literal["ok", "aborted"] = "ok"
    for step in range(spec.steps):
        seen: list[Tensor] = []
        try:
            if lbfgs:
                inner = built.closure(step)

                def closure(
                    inner: Callable[[], Tensor] = inner, seen: list[Tensor] = seen
                ) -> Tensor:
                    loss = inner()
                    seen.append(loss.detach())
                    return loss

                stepper(None, closure)
            else:
                built.optimizer.zero_grad(set_to_none=True)
                loss = built.compute_loss(step)
                scaled = built.scaler.scale(loss) if built.scaler is not None else loss
                torch.autograd.backward(scaled)
                seen.append(loss.detach())
                stepper(loss, None)
        except TrainingDivergedError:
            status = "aborted"
            finals = [built.heldout_loss()]
            break
        # HOST SYNC: scenario bookkeeping, outside gradguard's hot path.
        losses.append(float(seen[0].item()) if seen else math.nan)
        if step >= spec.steps - FINAL_WINDOW:
            finals.append(built.heldout_loss())
    ok = [v for v in finals if math.isfinite(v)]
    final = statistics.median(ok) if ok else math.nan
    with torch.no_grad():
        params = list(built.model.parameters())
        checksum = float(sum(p.double().sum() for p in params))
        finite = all(bool(torch.isfinite(p).all()) for p in params) and math.isfinite(final)
    limit = 1e4 * initial
    bad = (i for i, v in enumerate(losses) if not (math.isfinite(v) and v <= limit))
    note = getattr(stepper, "note", None)
    return RunResult(
        spec.id,
        status,
        tuple(losses),
        initial,
        final,
        finite,
        next(bad, None),
        checksum,
        time.perf_counter() - start,
        note() if callable(note) else "",
    )


Outcome: TypeAlias = Literal["exploding", "healthy", "tolerated"]


def classify(spec: GeneratedScenario, unguarded: RunResult) -> Outcome:
    """What an unprotected run of ``spec`` did: the label the benchmarks score against.

    ``exploding``: it ended non-finite, a training loss was non-finite or above 1e4 times the
    initial held-out loss, or its final loss is above :data:`EXPLODE_FACTOR` times the initial.
    ``healthy``: otherwise, without a fault (a guard must leave it bit-identical).
    ``tolerated``: otherwise, with a fault that the run shrugged off (the scaler skipped it, the
    noisy labels did no lasting harm).
    """
    if (
        not unguarded.finite
        or unguarded.divergence_step is not None
        or unguarded.final > EXPLODE_FACTOR * unguarded.initial
    ):
        return "exploding"
    return "healthy" if spec.fault == "none" else "tolerated"


def incident_step(spec: GeneratedScenario, unguarded: RunResult) -> int:
    """The step an exploding unprotected run went wrong: a detector should warn by then.

    The divergence step when there is one; else the first step from which every training loss
    stays above :data:`EXPLODE_FACTOR` times the initial held-out loss (the last step if none).
    """
    if unguarded.divergence_step is not None:
        return unguarded.divergence_step
    bar = EXPLODE_FACTOR * unguarded.initial
    start = len(unguarded.losses) - 1
    for i in range(len(unguarded.losses) - 1, -1, -1):
        if not unguarded.losses[i] > bar:
            break
        start = i
    return start
