"""Zero-code protection: optimizer step hooks run a :class:`~gradguard.guard.Guard` around steps.

A Guard normally replaces ``optimizer.step()``. Here the user's own ``optimizer.step()`` stays, and
the guard runs in two halves around it (:meth:`Guard.begin_step` and :meth:`Guard.finish_step`):

* **before the step** (an optimizer step pre-hook, or a framework's "before optimizer step"
  callback): measure the gradients, observe, decide, clip them in place; when the decision skips
  the step, every gradient of the optimizer is set to ``None``. PyTorch's optimizers leave a
  parameter without a gradient untouched (no update, no momentum or weight decay, no step
  count), so the user's ``step()`` then changes nothing. The dropped gradients are not restored:
  the step is over for them, exactly as after ``zero_grad(set_to_none=True)``. A learning-rate
  backoff scales every group's rate for the duration of the step.
* **after the step** (a post-hook): restore the rates, roll back when the policy says so, write
  the :class:`~gradguard.records.StepRecord` to the sinks, take snapshots.

:class:`GlobalGuard` installs these hooks for *every* optimizer with
``torch.optim.optimizer.register_optimizer_step_pre_hook``/``..._post_hook`` (what
``gradguard run`` does) and names the tensors after the module that holds the optimizer's
parameters. It sees the loss through :class:`LossTap`, which wraps ``torch.autograd.backward``
(hence ``loss.backward()``) to keep, on the device, the sum of the scalars that ``backward``
was called on since the last optimizer step (the micro-batch losses under gradient accumulation,
which add up to the batch loss; a ``step(closure)`` call hands its loss over directly). It also
counts ``backward`` calls, to tell a script that updates its weights by hand (no optimizer step
ever comes) that it is not protected. What hooks cannot see: a loss scaled by a
``GradScaler`` before ``backward`` is seen scaled (the loss rules are ratios, so only a change of
the scale shows, as a factor of two); and a learning-rate scheduler that the script steps itself
also advances on skipped steps.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from gradguard.errors import ConfigError, check_int
from gradguard.guard import Guard, PendingStep
from gradguard.records import Severity, StepRecord
from gradguard.sinks import JsonlSink, Sink, is_launch_rank_zero
from gradguard.stats.recurrent import recurrent_weights

__all__ = [
    "GlobalGuard",
    "HookedGuard",
    "LossTap",
    "add_loss",
    "describe_model",
    "find_model",
    "is_launch_rank_zero",
    "locate",
    "name_parameters",
    "unwrap_optimizer",
]


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside a framework's wrapper (Lightning, Accelerate).

    Raises:
        ConfigError: no torch optimizer is found within three levels of wrapping.
    """
    current = optimizer
    for _ in range(4):
        if isinstance(current, torch.optim.Optimizer):
            return current
        inner = getattr(current, "optimizer", None) or getattr(current, "_optimizer", None)
        if inner is None:
            break
        current = inner
    raise ConfigError(
        f"expected a torch.optim.Optimizer (or a wrapper holding one as .optimizer), got "
        f"{type(optimizer).__name__}."
    )


class _OptimizerParameters(nn.Module):
    """Stand-in model when no module holds all of an optimizer's parameters: names them by group."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self._gradguard_label = f"{type(optimizer).__name__} tensors"
        self.param_groups = nn.ModuleList(
            nn.ParameterList(list(group["params"])) for group in optimizer.param_groups
        )


def find_model(optimizer: torch.optim.Optimizer) -> nn.Module | None:
    """The live ``nn.Module`` that holds every parameter of ``optimizer`` (the tightest such one).

    Scans the objects the garbage collector tracks, once: used where the training script never
    hands its model to gradguard. Among the modules holding all the optimizer's parameters, the
    one with the fewest parameters wins (the model rather than a wrapper around model and loss).

    Returns:
        The module, or ``None`` when no single module holds them all.
    """
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not wanted:
        return None
    best: nn.Module | None = None
    best_size = 0
    with warnings.catch_warnings():
        # Touching some module-level objects (deprecated aliases) warns: not our business here.
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                # The type, not isinstance: proxies that pose as modules through __class__
                # (Lightning wraps modules so) would tie with the module they wrap.
                if not issubclass(type(obj), nn.Module):
                    continue
                held = {id(p) for p in obj.parameters()}
            except Exception:  # a half-built or exotic object: not the module we want
                continue
            if wanted <= held and (best is None or len(held) < best_size):
                best, best_size = obj, len(held)
    return best


def describe_model(model: nn.Module) -> dict[str, Any]:
    """What the report's advisor reads from a log header: recurrent, cell, stacked layers."""
    weights = recurrent_weights(model)
    if not weights:
        return {"class": _label(model), "recurrent": False}
    kinds = {w.kind for w in weights}
    kind = kinds.pop() if len(kinds) == 1 else None
    cell = "RNN" if kind in ("RNN_TANH", "RNN_RELU") else kind
    layers = len({(id(w.module), w.layer) for w in weights})
    return {"class": _label(model), "recurrent": True, "cell": cell, "num_layers": layers}


def _label(model: nn.Module) -> str:
    """The model's class, or what a stand-in model is made of (``encoder+head``)."""
    label = model.__dict__.get("_gradguard_label")
    return label if isinstance(label, str) else type(model).__name__


def drop_grads(optimizer: torch.optim.Optimizer) -> None:
    """Make the coming ``optimizer.step()`` a no-op: it skips parameters without a gradient."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


class HookedGuard:
    """A :class:`~gradguard.guard.Guard` driven from outside ``optimizer.step()``.

    Call :meth:`before_step` once the gradients are ready and before the optimizer steps, and
    :meth:`after_step` once it has stepped; :meth:`attach` registers both as the optimizer's own
    step hooks instead.

    Args:
        optimizer: the optimizer (a Lightning or Accelerate wrapper is unwrapped).
        model: the module whose parameters it trains (names the tensors, is snapshotted);
            ``None`` looks for it with :func:`find_model`.
        sinks: receive one record per step.
        guard_options: keyword arguments of :class:`~gradguard.guard.Guard` (``clip``,
            ``policy``, ``snapshot_every``, ``preset``, ...), except ``scheduler`` and
            ``scaler``: the script steps those itself.

    Raises:
        ConfigError: an unknown or unsupported guard option.
    """

    def __init__(
        self,
        optimizer: Any,
        model: nn.Module | None = None,
        *,
        sinks: Iterable[Sink] = (),
        **guard_options: Any,
    ) -> None:
        for name in ("scheduler", "scaler", "sinks"):
            if name in guard_options:
                raise ConfigError(
                    f"{name}= is not available under optimizer hooks: the script steps its own "
                    "scheduler and GradScaler; pass sinks= to HookedGuard itself."
                )
        self.optimizer = unwrap_optimizer(optimizer)
        found = model if model is not None else find_model(self.optimizer)
        self.model: nn.Module = found if found is not None else _OptimizerParameters(self.optimizer)
        self.guard = Guard(self.model, self.optimizer, sinks=tuple(sinks), **guard_options)
        self.last: StepRecord | None = None
        self._pending: PendingStep | None = None
        self._lr = contextlib.ExitStack()
        self._handles: list[Any] = []

    def before_step(self, loss: Tensor | float | None = None) -> None:
        """Measure, decide and clip; make the coming ``optimizer.step()`` a no-op to skip it."""
        if self._pending is not None:  # the last step raised between the two halves
            self._lr.close()
            self._pending = None
        pending = self.guard.begin_step(loss)
        if pending.decision.apply:
            self._lr.enter_context(self.guard.learning_rate(pending))
        else:
            drop_grads(self.optimizer)
        self._pending = pending

    def after_step(self) -> StepRecord | None:
        """Finish the step begun by :meth:`before_step` (``None`` when none was begun).

        Raises:
            TrainingDivergedError: the guard gave up on the run (its message says what to try).
        """
        pending, self._pending = self._pending, None
        self._lr.close()
        if pending is None:
            return None
        self.last = self.guard.finish_step(pending)
        return self.last

    def attach(self, *, before: bool = True, after: bool = True) -> HookedGuard:
        """Register :meth:`before_step`/:meth:`after_step` as this optimizer's own step hooks.

        Args:
            before: register the pre-step hook (leave it to a framework callback when the
                optimizer steps through a closure: the pre-hook runs before the closure computes
                the gradients).
            after: register the post-step hook.
        """
        return self.hook_steps(
            self.before_step if before else None, self.after_step if after else None
        )

    def hook_steps(
        self, before: Callable[[], object] | None, after: Callable[[], object] | None
    ) -> HookedGuard:
        """Run ``before``/``after`` from this optimizer's own step hooks, until :meth:`close`.

        :meth:`attach` passes the two halves themselves; a framework callback passes its own
        wrappers of them (the loss it collected, what to do once the guard gave up).

        Args:
            before: called before each ``optimizer.step()``; ``None`` registers no pre-hook.
            after: called after each ``optimizer.step()``; ``None`` registers no post-hook.
        """
        if before is not None:

            def pre(*_: Any) -> None:  # a pre-hook's return value would replace step()'s args
                before()

            self._handles.append(self.optimizer.register_step_pre_hook(pre))
        if after is not None:

            def post(*_: Any) -> None:
                after()

            self._handles.append(self.optimizer.register_step_post_hook(post))
        return self

    def close(self) -> None:
        """Remove the hooks this object registered and close the guard's sinks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._lr.close()
        self.guard.close()


def add_loss(total: Tensor | None, loss: Any, factor: float = 1.0) -> Tensor | None:
    """``total`` plus ``loss`` times ``factor``, kept on the device (no host sync).

    Only a one-element floating tensor is a loss (taken detached, as a 0-d float32); for anything
    else the result is ``None`` and the caller's total stands. ``total`` ``None`` starts a sum.
    """
    if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        return None
    value = loss.detach().reshape(()).float()
    if factor != 1.0:  # no kernel on the usual micro-batch
        value = value * factor
    return value if total is None else total + value


class LossTap:
    """The loss of a script that never hands it over: what ``backward`` is called on.

    :meth:`install` wraps ``torch.autograd.backward`` (which ``Tensor.backward`` calls); every
    call on a one-element floating tensor adds its detached value to a per-thread sum on the
    device (no host sync), and every call is counted. :meth:`take` returns the *sum* since the
    last call: the loss whose gradient the coming step applies. Under gradient accumulation the
    script divides each micro-batch loss by the number of micro-batches, so their sum is the
    batch loss (a mean would be that loss divided once more); losses backpropagated separately
    before one step (a GAN discriminator's real and fake terms) add up the same way.

    Args:
        on_backward: called after every ``backward`` call on this thread with the number of
            calls since the last :meth:`take` (a host integer: no device value is read).
    """

    def __init__(self, on_backward: Callable[[int], None] | None = None) -> None:
        self.on_backward = on_backward
        self._local = threading.local()
        self._original: Callable[..., Any] | None = None
        self._wrapper: Callable[..., Any] | None = None

    def install(self) -> LossTap:
        """Start watching ``backward`` (idempotent)."""
        if self._original is not None:
            return self
        original = torch.autograd.backward

        @functools.wraps(original)
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            self._add(tensors)
            result = original(tensors, *args, **kwargs)
            if self.on_backward is not None:
                self.on_backward(self.calls)
            return result

        self._original, self._wrapper = original, backward
        torch.autograd.backward = backward
        return self

    def remove(self) -> None:
        """Stop watching; restores ``torch.autograd.backward`` unless it was re-wrapped since."""
        if self._original is not None and torch.autograd.backward is self._wrapper:
            torch.autograd.backward = self._original
        self._original = self._wrapper = None
        self._local = threading.local()

    @property
    def calls(self) -> int:
        """How many times ``backward`` was called on this thread since the last :meth:`take`."""
        return int(getattr(self._local, "calls", 0))

    def _add(self, tensors: Any) -> None:
        self._local.calls = self.calls + 1
        total: Tensor | None = getattr(self._local, "total", None)
        if total is not None and isinstance(tensors, Tensor) and total.device != tensors.device:
            total = None  # a loss on another device starts the sum over (adding would fail)
        added = add_loss(total, tensors)
        if added is not None:
            self._local.total = added

    def take(self) -> Tensor | None:
        """The sum of the losses seen on this thread since the last call (a device scalar)."""
        total: Tensor | None = getattr(self._local, "total", None)
        self._local.total, self._local.calls = None, 0
        return total


_PACKAGE_DIRS = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).parent))


def _script_frames() -> list[FrameType]:
    """The running frames outside gradguard and torch, innermost first (the training code)."""
    frames = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_PACKAGE_DIRS) and not filename.startswith("<frozen"):
            frames.append(frame)
        frame = frame.f_back
    return frames


def _place(frame: FrameType) -> str:
    code = frame.f_code
    name = Path(code.co_filename).name
    return name if code.co_name == "<module>" else f"{name}:{code.co_name}()"


def _members(value: object) -> Iterator[tuple[str, object]]:
    """Attributes one level down: a module's children, or a plain object's ``__dict__``."""
    if isinstance(value, nn.Module):
        yield from value._modules.items()
    elif not isinstance(value, (type, ModuleType)) and not callable(value):
        with contextlib.suppress(TypeError):
            yield from vars(value).items()


def locate(module: nn.Module, frames: Iterable[FrameType]) -> str | None:
    """Where the training code holds ``module``: ``train.py:main() as `model```, or ``None``.

    Looks at the variables of ``frames`` and one attribute down (``self.model``).
    """
    for frame in frames:
        for name, value in list(frame.f_locals.items()):
            if value is module:
                return f"{_place(frame)} as `{name}`"
            for attr, inner in list(_members(value)):
                if inner is module:
                    return f"{_place(frame)} as `{name}.{attr}`"
    return None


class _FoundModules(nn.Module):
    """Stand-in model made of the script's variables that hold some of an optimizer's tensors."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self._gradguard_label = "+".join(modules)
        for name, module in modules.items():
            self.add_module(name if not hasattr(self, name) else f"{name}_", module)


def _modules_in(
    frames: Iterable[FrameType], wanted: set[int]
) -> tuple[dict[str, nn.Module], str, set[int]]:
    """Variables holding modules that together hold as many of ``wanted`` as they can."""
    found: dict[str, nn.Module] = {}
    covered: set[int] = set()
    place = ""
    for frame in frames:
        for name, value in list(frame.f_locals.items()):
            if not isinstance(value, nn.Module) or name in found or not name.isidentifier():
                continue
            held = {id(p) for p in value.parameters()} & wanted
            if held - covered:
                found[name], covered = value, covered | held
                place = place or _place(frame)
    return found, place, covered


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def name_parameters(optimizer: torch.optim.Optimizer) -> tuple[nn.Module | None, str]:
    """The module that names ``optimizer``'s tensors under global hooks, and a line saying so.

    The tightest live module holding them all (:func:`find_model`), located among the training
    code's variables; else the script's modules that hold them between them; else ``None``
    (the tensors are then named by position).
    """
    label = type(optimizer).__name__
    model = find_model(optimizer)
    frames = _script_frames()
    if model is not None:
        where = (
            locate(model, frames) or "the live objects (deeper than a variable or its attribute)"
        )
        return (
            model,
            f"naming the parameters of {label} from model {type(model).__name__} found in {where}",
        )
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    modules, place, covered = _modules_in(frames, wanted)
    if modules:
        names = ", ".join(f"`{n}`" for n in modules)
        line = (
            f"naming the parameters of {label} from the modules {names} found in {place} "
            "(no single nn.Module holds them all)"
        )
        if len(covered) < len(wanted):
            line += (
                f"; {_count(len(wanted) - len(covered), 'other tensor')} named param_groups[G][I]"
            )
        return _FoundModules(modules), line
    tensors = _count(len(wanted), "tensor")
    return None, (
        f"no nn.Module holding the {tensors} of {label} was found: they are named by position, "
        "param_groups.G.I (group G, index I); to name them, put them in one nn.Module (an "
        "nn.ParameterDict will do) or pass the model to GlobalGuard(models=[...])"
    )


NO_STEP_WARNING_AFTER = 10
"""``backward()`` calls without an optimizer step before :class:`GlobalGuard` says so."""


class GlobalGuard:
    """Guard every optimizer of the process through global step hooks; a context manager.

    Example::

        with GlobalGuard(log="runs/train.jsonl") as protection:
            train()                       # any loop calling optimizer.step()
        print(protection.summary())

    Each optimizer gets its own guard (and its own log: ``<log>``, then ``<log stem>.opt2.jsonl``
    ...) at its first step; in a distributed run only rank 0 writes logs. The guard names the
    tensors after the module that holds them (see :func:`name_parameters`) and says which one in
    a note. ``optimizer.step(closure)`` is supported: the hook evaluates the closure once before
    the optimizer starts, judges that evaluation, and hands its loss to the optimizer's first
    call, so a skip and a learning-rate back-off hold for the whole step (L-BFGS reads its rate
    before its first closure call); the logged loss is that first evaluation's, the loss at the
    weights the step starts from. A clip scales that evaluation's gradient; L-BFGS's further
    evaluations within the step are not judged (each would cost a host sync). Otherwise the
    loss is the sum of what ``backward`` was called on since the last step (see
    :class:`LossTap`).

    Notes (which model names the tensors; ``backward()`` called again and again with no
    optimizer step, as in a script that updates its weights by hand, which hooks cannot guard)
    go to ``notify`` with their severity (INFO, WARNING), and are kept in :attr:`notes`;
    without ``notify`` the second kind is
    issued as a :class:`UserWarning`.

    Args:
        log: JSONL log of the first optimizer; ``None`` writes none.
        sinks: further sinks (console, TensorBoard) shared by every optimizer's guard.
        metadata: stored in each log header, beside the model's description.
        capture_loss: watch ``backward`` for the loss (and for steps that never come);
            ``False`` judges gradients only.
        models: modules to name the tensors from, tried before the search.
        notify: receives each note as one line, with its severity.
        no_step_warning_after: ``backward()`` calls without an optimizer step before the note
            that nothing is guarded (twice the longest accumulation seen, once steps came).
        guard_options: keyword arguments of :class:`~gradguard.guard.Guard`.
    """

    def __init__(
        self,
        *,
        log: str | os.PathLike[str] | None = None,
        sinks: Iterable[Sink] = (),
        metadata: Mapping[str, Any] | None = None,
        capture_loss: bool = True,
        models: Iterable[nn.Module] = (),
        notify: Callable[[str, Severity], None] | None = None,
        no_step_warning_after: int = NO_STEP_WARNING_AFTER,
        **guard_options: Any,
    ) -> None:
        check_int(
            "no_step_warning_after",
            no_step_warning_after,
            minimum=1,
            fix=f"The default is {NO_STEP_WARNING_AFTER}.",
        )
        self.log = Path(log) if log is not None else None
        self.sinks = tuple(sinks)
        self.metadata = dict(metadata or {})
        self.models = tuple(models)
        self.notify = notify
        self.notes: list[str] = []
        self.guard_options = guard_options
        self.guards: list[HookedGuard] = []
        self.logs: list[Path] = []
        self._by_optimizer: weakref.WeakKeyDictionary[torch.optim.Optimizer, HookedGuard] = (
            weakref.WeakKeyDictionary()
        )
        self._handles: list[Any] = []
        self._local = threading.local()
        self._no_step_after = no_step_warning_after
        self._longest_accumulation = 0
        self._warned_no_step = False
        self.backward_calls = 0
        """``backward()`` calls seen (with ``capture_loss``), inside closures included."""
        self.loss_tap = LossTap(self._on_backward) if capture_loss else None

    # ------------------------------------------------------------------------------ hooks
    def install(self) -> GlobalGuard:
        """Register the global pre- and post-step hooks (idempotent)."""
        if not self._handles:
            self._handles = [
                register_optimizer_step_pre_hook(self._pre_hook),
                register_optimizer_step_post_hook(self._post_hook),
            ]
            if self.loss_tap is not None:
                self.loss_tap.install()
        return self

    def remove(self) -> None:
        """Unregister the hooks and close every guard's sinks (the logs are complete)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.loss_tap is not None:
            self.loss_tap.remove()
        for hooked in self.guards:
            hooked.close()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> GlobalGuard:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _note(self, message: str, severity: Severity = Severity.INFO) -> None:
        self.notes.append(message)
        if self.notify is not None:
            self.notify(message, severity)
        elif severity is not Severity.INFO:
            warnings.warn(message, UserWarning, stacklevel=5)  # the script's backward()

    def _on_backward(self, calls: int) -> None:
        """Say once that nothing is guarded when ``backward`` keeps coming without a step."""
        self.backward_calls += 1
        if self._warned_no_step or self._busy_now():
            return
        if calls >= max(self._no_step_after, 2 * self._longest_accumulation):
            self._warned_no_step = True
            since = "yet" if not self.guards else "since the last one"
            self._note(
                f"{calls} backward() calls and no optimizer.step() {since}: gradguard guards "
                "the steps of torch.optim optimizers, so weights updated by hand (e.g. "
                "p.data.add_(p.grad, alpha=-lr)) are NOT protected. Step a torch.optim optimizer "
                "(torch.optim.SGD(model.parameters(), lr=lr) does the same update), or call "
                "gradguard.Guard in the script. (Gradient accumulation over more micro-batches "
                "looks the same until its step comes.)",
                Severity.WARNING,
            )

    def _steps_came(self, calls: int) -> None:
        """Record how many ``backward`` calls preceded a step; take back a note proved wrong."""
        if self._warned_no_step and calls >= self._no_step_after:
            self._note(
                f"optimizer.step() came after {calls} backward() calls (gradient accumulation): "
                "the steps are guarded after all."
            )
            self._warned_no_step = False
        self._longest_accumulation = max(self._longest_accumulation, calls)

    def _guard_for(self, optimizer: torch.optim.Optimizer) -> HookedGuard:
        hooked = self._by_optimizer.get(optimizer)
        if hooked is not None:
            return hooked
        model, line = self._name(optimizer)
        self._note(line)
        sinks = list(self.sinks)
        if self.log is not None and is_launch_rank_zero():  # under torchrun, one log: rank 0's
            k = len(self.guards) + 1
            path = self.log if k == 1 else self.log.with_name(f"{self.log.stem}.opt{k}.jsonl")
            meta = {
                **self.metadata,
                "optimizer": type(optimizer).__name__,
                "model": describe_model(model) if model is not None else {"recurrent": False},
            }
            sinks.insert(0, JsonlSink(path, metadata=meta, if_exists="overwrite"))
            self.logs.append(path)
        named = model if model is not None else _OptimizerParameters(optimizer)
        hooked = HookedGuard(optimizer, named, sinks=sinks, **self.guard_options)
        self._by_optimizer[optimizer] = hooked
        self.guards.append(hooked)
        return hooked

    def _name(self, optimizer: torch.optim.Optimizer) -> tuple[nn.Module | None, str]:
        wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
        label = type(optimizer).__name__
        for i, module in enumerate(self.models):
            if wanted <= {id(p) for p in module.parameters()}:
                return module, (
                    f"naming the parameters of {label} from model {type(module).__name__} "
                    f"(models[{i}] of GlobalGuard)"
                )
        return name_parameters(optimizer)

    @contextlib.contextmanager
    def _busy(self) -> Iterator[bool]:
        """Whether a hook is already running on this thread (a guard's own step is not hooked)."""
        busy = getattr(self._local, "busy", False)
        self._local.busy = True
        try:
            yield busy
        finally:
            self._local.busy = busy

    def _busy_now(self) -> bool:
        return bool(getattr(self._local, "busy", False))

    def _take_loss(self) -> Tensor | None:
        if self.loss_tap is None:
            return None
        self._steps_came(self.loss_tap.calls)
        return self.loss_tap.take()

    def _pre_hook(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        with self._busy() as busy:
            if busy:
                return None
            tapped = self._take_loss()
            hooked = self._guard_for(optimizer)
            # ``args`` holds the optimizer itself first, then step()'s own arguments.
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
            if closure is None:
                hooked.before_step(tapped)
                return None
            # Evaluate the closure here, before the optimizer reads its settings (L-BFGS reads
            # its rate first), so that the decision holds for the whole step.
            with torch.enable_grad():
                first = closure()
            if self.loss_tap is not None:
                self.loss_tap.take()  # the closure hands its loss over itself
            hooked.before_step(first if isinstance(first, (Tensor, float, int)) else None)
        calls = [0]

        def guarded_closure() -> Any:
            calls[0] += 1
            if calls[0] == 1:  # the evaluation judged above: its gradients are in place
                return first
            loss = closure()
            if self.loss_tap is not None:
                self.loss_tap.take()  # L-BFGS evaluates many times: one loss per step
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": guarded_closure}
        return (args[0], guarded_closure, *args[2:]), kwargs

    def _post_hook(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        with self._busy() as busy:
            if busy:
                return
            hooked = self._by_optimizer.get(optimizer)
            if hooked is not None:
                hooked.after_step()

    # ------------------------------------------------------------------------------ results
    def summary(self) -> list[dict[str, Any]]:
        """One :meth:`Guard.summary` per optimizer seen, in order of first step."""
        return [
            {
                "optimizer": type(h.optimizer).__name__,
                "model": _label(h.model),
                **h.guard.summary(),
            }
            for h in self.guards
        ]
