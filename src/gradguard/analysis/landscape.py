"""The loss along a line through weight space, its cliffs, and whether a gradient step crosses one.

Near the boundary between stable and explosive dynamics the loss of a recurrent network can jump
by orders of magnitude over a tiny change of the weights: a *cliff* (Pascanu et al., 2013). A
plain gradient step computed just before the cliff can overshoot it; clipping the gradient norm
bounds the step so that it cannot. :func:`landscape_scan` evaluates L(θ(α)) on a grid of α,
:func:`find_cliffs` locates jumps by more than a factor between neighbouring points, and
:func:`gradient_vs_cliff` answers "would an SGD step with this learning rate cross one?".

All three leave the model exactly as they found it: parameters and buffers are restored bitwise,
module train/eval flags restored, ``.grad`` untouched.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradguard.analysis._common import LossFn, Progress, Result, call_model, scalar_loss
from gradguard.errors import ConfigError, UnsupportedModelError, check_int, check_positive

__all__ = [
    "Cliff",
    "CliffCheck",
    "LandscapeScan",
    "find_cliffs",
    "gradient_vs_cliff",
    "landscape_scan",
    "restored",
]

Direction = Literal["gradient", "scale"] | Mapping[str, Tensor] | Callable[[nn.Module, float], None]


@dataclasses.dataclass(frozen=True)
class Cliff:
    """A jump of the loss: one or more consecutive neighbour steps, each by more than the factor.

    Attributes:
        index: the cliff starts at ``alphas[index]``.
        steps: number of grid intervals it spans (consecutive jumps the same way are one cliff).
        alpha_before: ``alphas[index]``, the last point before the cliff.
        alpha_after: ``alphas[index + steps]``, the first point after it.
        loss_before: loss at ``alpha_before``.
        loss_after: loss at ``alpha_after``.
        ratio: larger over smaller loss magnitude across the whole cliff (``inf`` when one side
            is not finite).
    """

    index: int
    steps: int
    alpha_before: float
    alpha_after: float
    loss_before: float
    loss_after: float
    ratio: float

    @property
    def location(self) -> float:
        """Midpoint of the bracketing interval."""
        return 0.5 * (self.alpha_before + self.alpha_after)


@dataclasses.dataclass(frozen=True)
class LandscapeScan(Result):
    """Result of :func:`landscape_scan`.

    Attributes:
        alphas: the grid, increasing.
        losses: L(θ(α)) per alpha (``inf``/``nan`` kept as they came).
        direction: ``"gradient"``, ``"scale"``, ``"custom"`` (a mapping) or ``"callable"``.
        base_loss: loss at the unchanged weights.
        grad_norm: ‖∇L‖ over the moved parameters for ``"gradient"``, else ``None``.
        params: names of the parameters the direction moves (empty for a callable).
        factor: the jump factor used to find ``cliffs``.
        cliffs: the cliffs found, in order of alpha.
    """

    kind = "landscape_scan"

    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    direction: str
    base_loss: float
    grad_norm: float | None
    params: tuple[str, ...]
    factor: float
    cliffs: tuple[Cliff, ...]

    def __str__(self) -> str:
        lines = [
            f"Loss along {self.direction} ({len(self.alphas)} points, alpha "
            f"{self.alphas[0]:.4g}..{self.alphas[-1]:.4g}), base loss {self.base_loss:.4g}: "
            f"{len(self.cliffs)} cliff(s) (jump > {self.factor:g}x)"
        ]
        for c in self.cliffs:
            lines.append(
                f"  alpha {c.alpha_before:.4g} -> {c.alpha_after:.4g}: loss {c.loss_before:.4g} "
                f"-> {c.loss_after:.4g} ({c.ratio:.3g}x)"
            )
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CliffCheck(Result):
    """Result of :func:`gradient_vs_cliff`.

    Attributes:
        lr: the learning rate of the plain step θ - lr·∇L.
        falls_off: whether the step crosses a cliff or lands at a loss more than ``factor``
            times the current one (or not finite).
        base_loss: loss now.
        step_loss: loss after the step.
        grad_norm: ‖∇L‖ over the moved parameters.
        cliff: the first cliff on the way, or ``None``.
        safe_lr: largest scanned learning rate before the first cliff (``None``: no cliff).
        safe_clip: gradient-norm bound that keeps a step of size ``lr`` before the cliff,
            ``safe_lr * grad_norm / lr`` (``None``: no cliff).
        scan: the scan along -∇L from 0 to ``lr``.
    """

    kind = "cliff_check"

    lr: float
    falls_off: bool
    base_loss: float
    step_loss: float
    grad_norm: float
    cliff: Cliff | None
    safe_lr: float | None
    safe_clip: float | None
    scan: LandscapeScan

    def __str__(self) -> str:
        if not self.falls_off:
            return (
                f"A plain step with lr={self.lr:g} stays on this side: loss {self.base_loss:.4g} "
                f"-> {self.step_loss:.4g}."
            )
        where = (
            f"a cliff at lr≈{self.cliff.location:.4g} (loss {self.cliff.loss_before:.4g} -> "
            f"{self.cliff.loss_after:.4g}); clip the gradient norm at <= {self.safe_clip:.4g} or "
            f"keep lr <= {self.safe_lr:.4g}"
            if self.cliff is not None and self.safe_clip is not None and self.safe_lr is not None
            else "a much higher loss"
        )
        return (
            f"A plain step with lr={self.lr:g} falls off: loss {self.base_loss:.4g} -> "
            f"{self.step_loss:.4g}, crossing {where}."
        )


def _ratio(a: float, b: float, floor: float) -> float:
    finite_a, finite_b = math.isfinite(a), math.isfinite(b)
    if not (finite_a or finite_b):
        return 1.0  # two non-finite values: no measurable jump between them
    if finite_a != finite_b:
        return math.inf
    hi, lo = max(abs(a), abs(b)), min(abs(a), abs(b))
    return hi / max(lo, floor)


def find_cliffs(
    alphas: Sequence[float] | LandscapeScan,
    losses: Sequence[float] | None = None,
    *,
    factor: float = 10.0,
    floor: float = 1e-12,
) -> tuple[Cliff, ...]:
    """Locate cliffs: neighbouring points whose losses differ by more than ``factor`` times.

    The jump between L_i and L_{i+1} is max(|L_i|, |L_{i+1}|) / max(min(|L_i|, |L_{i+1}|), floor);
    a finite loss next to a non-finite one is an infinite jump. Consecutive jumps in the same
    direction (up, or down) form one cliff spanning several grid steps: a wall steeper than the
    grid resolves. The resolution is the grid's: a cliff lies somewhere in its bracket.

    Args:
        alphas: the increasing grid, or a :class:`LandscapeScan` (then ``losses`` is omitted).
        losses: the loss at each alpha.
        factor: the jump that counts as a cliff, > 1.
        floor: smallest magnitude a loss is taken to have (avoids dividing by 0).

    Returns:
        The cliffs, in order of alpha.

    Raises:
        ConfigError: lengths differ, ``factor`` <= 1, or ``losses`` missing.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013, §3 (cliffs in the error surface).
    """
    if isinstance(alphas, LandscapeScan):
        losses = alphas.losses
        alphas = alphas.alphas
    if losses is None:
        raise ConfigError("find_cliffs needs losses (or a LandscapeScan as first argument).")
    if len(alphas) != len(losses):
        raise ConfigError(
            f"alphas and losses must have the same length, got {len(alphas)} and {len(losses)}."
        )
    if not (isinstance(factor, (int, float)) and factor > 1.0):
        raise ConfigError(f"factor must be a number > 1, got {factor!r}; 10 means a 10x jump.")
    check_positive("floor", floor)
    values = [float(v) for v in losses]
    runs: list[list[int]] = []  # [start, end, sign] of consecutive jumps the same way
    for i in range(len(values) - 1):
        a, b = values[i], values[i + 1]
        if not _ratio(a, b, floor) > factor:
            continue
        up = not math.isfinite(b) or (math.isfinite(a) and abs(b) > abs(a))
        sign = 1 if up else -1
        if runs and runs[-1][1] == i and runs[-1][2] == sign:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, sign])
    return tuple(
        Cliff(
            index=start,
            steps=end - start,
            alpha_before=float(alphas[start]),
            alpha_after=float(alphas[end]),
            loss_before=values[start],
            loss_after=values[end],
            ratio=_ratio(values[start], values[end], floor),
        )
        for start, end, _ in runs
    )


class _Snapshot:
    """Copies of every parameter and buffer of a model, and its modules' train flags."""

    def __init__(self, model: nn.Module) -> None:
        self.saved = [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]
        self.modes = [(m, m.training) for m in model.modules()]

    def restore_tensors(self) -> None:
        with torch.no_grad():
            for tensor, copy in self.saved:
                tensor.copy_(copy)

    def restore(self) -> None:
        self.restore_tensors()
        for module, mode in self.modes:
            module.training = mode


@contextmanager
def restored(model: nn.Module) -> Iterator[_Snapshot]:
    """Context manager that restores ``model``'s parameters, buffers and train flags bitwise.

    Args:
        model: the model whose state to save on entry and write back on exit (also on error).

    Yields:
        The snapshot; its ``restore_tensors()`` writes the saved values back early.
    """
    snapshot = _Snapshot(model)
    try:
        yield snapshot
    finally:
        snapshot.restore()


def _check_batch(batch: Any) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ConfigError(
            f"batch must be a pair (inputs, targets), got {type(batch).__name__}. The loss is "
            "loss_fn(model(inputs), targets)."
        )
    return batch[0], batch[1]


def _check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(a) for a in alphas)
    if len(values) < 2 or not all(math.isfinite(a) for a in values):
        raise ConfigError(f"alphas must hold at least two finite numbers, got {alphas!r:.120}.")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError("alphas must be strictly increasing, e.g. torch.linspace(0, 1, 51).")
    return values


def _grid(start: float, stop: float, count: int) -> tuple[float, ...]:
    return tuple(start + (stop - start) * i / (count - 1) for i in range(count))


def _select(model: nn.Module, params: Sequence[str] | None) -> list[tuple[str, nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        return named
    if isinstance(params, str):
        params = [params]
    lookup = dict(named)
    unknown = [n for n in params if n not in lookup]
    if unknown:
        raise ConfigError(
            f"params {unknown!r} are not trainable parameters of the model; it has "
            f"{[n for n, _ in named][:12]!r}{' ...' if len(named) > 12 else ''}."
        )
    return [(n, lookup[n]) for n in params]


def _evaluate(model: nn.Module, inputs: Any, targets: Any, loss_fn: LossFn) -> float:
    with torch.no_grad():
        loss = scalar_loss(loss_fn(call_model(model, inputs), targets), allow_nonfinite=True)
    return float(loss)


def landscape_scan(
    model: nn.Module,
    loss_fn: LossFn,
    batch: tuple[Any, Any],
    direction: Direction = "gradient",
    alphas: Sequence[float] | None = None,
    *,
    params: Sequence[str] | None = None,
    factor: float = 10.0,
    train: bool = False,
    progress: Progress | None = None,
) -> LandscapeScan:
    """Evaluate the loss along a line (or curve) θ(α) through weight space and find its cliffs.

    Directions:

    * ``"gradient"``: θ(α) = θ - α·∇L(θ), so α is the learning rate of a plain SGD step
      (default grid -0.1 .. 0.5, step 0.01);
    * ``"scale"``: θ(α) = α·θ for the selected parameters (default grid 0.5 .. 2.0, step 0.01);
    * a mapping ``{param name: tensor}``: θ(α) = θ + α·d (default grid -1 .. 1, step 0.05);
    * a callable ``set_weights(model, alpha)`` that writes any weights in place, e.g.
      W_hh(w) = [[w, 0.1], [0.1, 0.9 w]]; each alpha starts from the original weights.
      ``alphas`` is then required.

    Args:
        model: the model; left exactly as found (see :func:`restored`).
        loss_fn: ``loss_fn(model(inputs), targets)`` returning a scalar tensor.
        batch: ``(inputs, targets)``; a tuple ``inputs`` is unpacked as positional arguments.
        direction: see above.
        alphas: the increasing grid of α.
        params: names of the parameters that ``"gradient"``/``"scale"`` move (default: all
            trainable ones).
        factor: jump between neighbouring points that counts as a cliff (see :func:`find_cliffs`).
        train: evaluate in train mode (dropout, batch statistics); eval mode by default.
        progress: optional ``progress(done, total)`` callback, called after each point.

    Returns:
        A :class:`LandscapeScan`.

    Raises:
        UnsupportedModelError: ``model`` is not an ``nn.Module``.
        ConfigError: unknown direction or parameter names, a direction tensor of the wrong shape,
            a bad grid, a non-scalar loss.
        NonFiniteError: the loss at the current weights is not finite and ``"gradient"`` needs it.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013, §3.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"landscape_scan moves the weights of an nn.Module, got {type(model).__name__}."
        )
    inputs, targets = _check_batch(batch)
    if isinstance(direction, str) and direction not in ("gradient", "scale"):
        raise ConfigError(
            f"direction must be 'gradient', 'scale', a mapping of tensors or a callable, got "
            f"{direction!r}."
        )
    if alphas is None:
        if callable(direction) and not isinstance(direction, Mapping):
            raise ConfigError(
                "a callable direction needs explicit alphas, e.g. "
                "alphas=torch.linspace(0.5, 2, 151)."
            )
        defaults = {"gradient": (-0.1, 0.5, 61), "scale": (0.5, 2.0, 151)}
        default = direction if isinstance(direction, str) else "custom"
        alphas = _grid(*defaults.get(default, (-1.0, 1.0, 41)))
    grid = _check_alphas(alphas)
    with restored(model) as snapshot:
        model.train(train)
        moved: list[tuple[str, nn.Parameter]] = []
        label: str
        steps: list[Tensor] = []
        grad_norm: float | None = None
        if isinstance(direction, str):
            moved = _select(model, params)
            if not moved:
                raise ConfigError("the model has no trainable parameter to move.")
        if direction == "gradient":
            with torch.enable_grad():
                loss = scalar_loss(loss_fn(call_model(model, inputs), targets))
                grads = torch.autograd.grad(loss, [p for _, p in moved], allow_unused=True)
            steps = [
                -g.detach() if g is not None else torch.zeros_like(p)
                for g, (_, p) in zip(grads, moved, strict=True)
            ]
            base = float(loss.detach())
            grad_norm = float(torch.linalg.vector_norm(torch.stack([s.norm() for s in steps])))
            label = "gradient"
        else:
            base = _evaluate(model, inputs, targets, loss_fn)
            if isinstance(direction, Mapping):
                lookup = dict(model.named_parameters())
                for name, tensor in direction.items():
                    param = lookup.get(name)
                    if param is None or not isinstance(tensor, Tensor):
                        raise ConfigError(
                            f"direction key {name!r} must name a parameter and map to a tensor."
                        )
                    if tensor.shape != param.shape:
                        raise ConfigError(
                            f"direction[{name!r}] has shape {tuple(tensor.shape)!r}, the "
                            f"parameter {tuple(param.shape)!r}."
                        )
                    moved.append((name, param))
                    steps.append(tensor.detach().to(param.device, param.dtype))
                label = "custom"
            elif direction == "scale":
                label = "scale"
            else:
                label = "callable"
        setter = direction if label == "callable" and callable(direction) else None
        origin = [p.detach().clone() for _, p in moved]
        losses = []
        for done, alpha in enumerate(grid, start=1):
            with torch.no_grad():
                if label == "scale":
                    for (_, p), p0 in zip(moved, origin, strict=True):
                        p.copy_(p0 * alpha)
                elif setter is not None:
                    snapshot.restore_tensors()
                    setter(model, alpha)
                else:
                    for (_, p), p0, d in zip(moved, origin, steps, strict=True):
                        p.copy_(p0 + alpha * d)
            losses.append(_evaluate(model, inputs, targets, loss_fn))
            if progress is not None:
                progress(done, len(grid))
    return LandscapeScan(
        alphas=grid,
        losses=tuple(losses),
        direction=label,
        base_loss=base,
        grad_norm=grad_norm,
        params=tuple(n for n, _ in moved),
        factor=float(factor),
        cliffs=find_cliffs(grid, losses, factor=factor),
    )


def gradient_vs_cliff(
    model: nn.Module,
    loss_fn: LossFn,
    batch: tuple[Any, Any],
    lr: float,
    *,
    points: int = 51,
    factor: float = 10.0,
    params: Sequence[str] | None = None,
    train: bool = False,
    progress: Progress | None = None,
) -> CliffCheck:
    """Would a plain gradient step θ - lr·∇L fall off a cliff? Scan α from 0 to ``lr`` and see.

    The loss is evaluated at θ - α·∇L for ``points`` values of α in [0, lr]. The step falls off
    when a cliff (a jump by more than ``factor`` between neighbours) lies on the way, or when the
    loss after the step is more than ``factor`` times the current one or not finite. When a cliff
    is found, ``safe_lr`` is the last α before it and ``safe_clip = safe_lr·‖∇L‖ / lr`` the
    gradient-norm bound that keeps a step with this learning rate short of it: gradient clipping
    turns the overshoot into a bounded step.

    Args:
        model: the model; left exactly as found.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning a scalar tensor.
        batch: ``(inputs, targets)``.
        lr: the learning rate of the step, > 0.
        points: grid points in [0, lr], >= 2.
        factor: jump that counts as a cliff.
        params: names of the parameters the step moves (default all trainable).
        train: evaluate in train mode.
        progress: optional ``progress(done, total)`` callback.

    Returns:
        A :class:`CliffCheck`.

    Raises:
        ConfigError: ``lr`` <= 0, ``points`` < 2, or as :func:`landscape_scan`.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013, §3.2 (clipping keeps the step from jumping over the cliff).
    """
    step = check_positive("lr", lr, fix="Pass the learning rate of your optimizer.")
    check_int("points", points, minimum=2, fix="20 points resolve a cliff well.")
    scan = landscape_scan(
        model,
        loss_fn,
        batch,
        "gradient",
        _grid(0.0, step, points),
        params=params,
        factor=factor,
        train=train,
        progress=progress,
    )
    grad_norm = scan.grad_norm if scan.grad_norm is not None else math.nan
    first = scan.cliffs[0] if scan.cliffs else None
    step_loss = scan.losses[-1]
    jumped = _ratio(scan.base_loss, step_loss, 1e-12) > factor and not step_loss < scan.base_loss
    falls = first is not None or jumped or not math.isfinite(step_loss)
    safe_lr = first.alpha_before if first is not None else None
    safe_clip = safe_lr * grad_norm / step if safe_lr is not None else None
    return CliffCheck(
        lr=step,
        falls_off=falls,
        base_loss=scan.base_loss,
        step_loss=step_loss,
        grad_norm=grad_norm,
        cliff=first,
        safe_lr=safe_lr,
        safe_clip=safe_clip,
        scan=scan,
    )
