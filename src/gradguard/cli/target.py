"""Load what the commands look at: a model from ``FILE.py:FACTORY`` or a checkpoint's tensors.

A factory is a callable taking no argument that returns an ``nn.Module``, or a pair
``(model, example_inputs)``; with inputs the depth profile runs too. Every failure (no such
file, an import error in the user's code, no such factory, a wrong return type) ends the command
with one ``error:`` line and one ``hint:`` line.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pickle
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from gradguard.cli.errors import fail

__all__ = ["LoadedModel", "is_factory_spec", "load_factory", "load_object", "load_tensors"]

_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model built by a user's factory.

    Attributes:
        model: the module.
        inputs: example inputs, when the factory returned ``(model, inputs)``.
        label: ``FILE.py:FACTORY`` or ``module:FACTORY`` as given.
    """

    model: nn.Module
    inputs: Any
    label: str


def is_factory_spec(target: str) -> bool:
    """``True`` when ``target`` reads as ``SOURCE:FACTORY`` (not a checkpoint path)."""
    source, sep, name = target.rpartition(":")
    if not sep or not _IDENTIFIER.match(name):
        return False
    return source.endswith(".py") or bool(_MODULE.match(source))


def _import_file(path: Path) -> ModuleType:
    if not path.exists():
        fail(f"file {str(path)!r} does not exist", "check the path of FILE.py in FILE.py:FACTORY")
    if not path.is_file():
        fail(f"{str(path)!r} is not a file", "name a python file: FILE.py:FACTORY")
    name = f"_gradguard_target_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
        fail(f"cannot import {str(path)!r}", "name a python file: FILE.py:FACTORY")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the file's own sibling imports work as when it runs directly
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        fail(f"importing {str(path)!r} raised {_describe(exc)}", "fix the error in that file")
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _import_module(name: str) -> ModuleType:
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            fail(
                f"no module named {name!r}",
                "pass FILE.py:FACTORY, or a module importable from the current folder",
            )
        fail(f"importing {name!r} raised {_describe(exc)}", "fix the error in that module")
    except Exception as exc:
        fail(f"importing {name!r} raised {_describe(exc)}", "fix the error in that module")
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def load_factory(target: str) -> LoadedModel:
    """Import ``SOURCE``, call ``FACTORY()`` and check that it gave a module (and inputs).

    Args:
        target: ``path/to/file.py:factory`` or ``package.module:factory``.

    Returns:
        The :class:`LoadedModel`.
    """
    source, _, name = target.rpartition(":")
    module = _import_file(Path(source)) if source.endswith(".py") else _import_module(source)
    factory = getattr(module, name, None)
    if factory is None:
        public = sorted(
            n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
        )[:8]
        fail(
            f"{source!r} has no attribute {name!r}",
            f"name a zero-argument function defined there (callables found: {', '.join(public)})"
            if public
            else "define a zero-argument function that returns the model",
        )
    if not callable(factory):
        fail(
            f"{source}:{name} is a {type(factory).__name__}, not a function",
            "name a zero-argument function that returns the model",
        )
    try:
        made = factory()
    except Exception as exc:
        fail(
            f"{source}:{name}() raised {_describe(exc)}",
            "the factory is called without arguments; fix it or wrap it in one that is",
        )
    inputs: Any = None
    model = made
    if isinstance(made, tuple) and len(made) == 2:
        model, inputs = made
    if not isinstance(model, nn.Module):
        fail(
            f"{source}:{name}() returned a {type(made).__name__}, not an nn.Module",
            "return the model, or a pair (model, example_inputs)",
        )
    return LoadedModel(model, inputs, target)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def load_tensors(checkpoint: Path) -> list[tuple[str, Tensor]]:
    """Every tensor of a checkpoint as ``(dotted name, tensor)``, loaded with ``weights_only``.

    Args:
        checkpoint: a file written by ``torch.save``.

    Returns:
        The tensors, at least one.
    """
    return load_object(checkpoint)[1]


def load_object(checkpoint: Path) -> tuple[Any, list[tuple[str, Tensor]]]:
    """The loaded checkpoint object and its tensors (at least one); a bad file exits with a hint."""
    from gradguard.cli.checkpoint import flatten_tensors, load_checkpoint

    if not checkpoint.exists():
        fail(f"checkpoint {str(checkpoint)!r} does not exist", "check the path and try again")
    if checkpoint.is_dir():
        fail(
            f"checkpoint {str(checkpoint)!r} is a folder",
            "pass the file written by torch.save (e.g. model.pt)",
        )
    try:
        obj = load_checkpoint(checkpoint)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            fail(
                f"{str(checkpoint)!r} holds Python objects that torch.load(weights_only=True) "
                "refuses to unpickle",
                "gradguard never runs pickled code; re-save the tensors only, e.g. "
                "torch.save(model.state_dict(), path)",
            )
        fail(
            f"{str(checkpoint)!r} is not a PyTorch checkpoint", "pass a file written by torch.save"
        )
    except Exception as exc:  # any failure to parse a foreign file means "not a checkpoint"
        fail(
            f"{str(checkpoint)!r} is not a readable PyTorch checkpoint ({_describe(exc)[:120]})",
            "pass a file written by torch.save",
        )
    tensors = list(flatten_tensors(obj))
    if not tensors:
        fail(
            f"{str(checkpoint)!r} holds no tensors (a {type(obj).__name__})",
            "pass a state_dict or a dict that contains one",
        )
    return obj, tensors
