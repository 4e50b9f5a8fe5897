"""``gradguard run SCRIPT [ARGS...]``: run an unmodified training script under a guard."""

from __future__ import annotations

import datetime
import logging
import os
import runpy
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from gradguard.cli.errors import fail
from gradguard.records import Severity

__all__ = ["EXIT_DIVERGED", "EXIT_INTERRUPTED", "run"]

EXIT_DIVERGED = 3
"""``run``: the guard gave up on the run (rollbacks exhausted) and stopped it."""
EXIT_INTERRUPTED = 130
"""``run``: interrupted with Ctrl-C (128 + SIGINT, as a shell reports it)."""

PRESETS = ("default", "strict", "textbook")


def default_log() -> Path:
    """``runs/gradguard-<local time>-<process id>.jsonl`` in the current folder, not yet taken.

    The process id keeps runs started in the same second (a sweep, a job array) apart; a name
    that is somehow taken gets ``-2``, ``-3``, ... appended. Nothing is created until the run's
    first step writes the log.
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = f"gradguard-{stamp}-{os.getpid()}"
    path = Path("runs") / f"{stem}.jsonl"
    number = 1
    while path.exists():
        number += 1
        path = path.with_name(f"{stem}-{number}.jsonl")
    return path


def _clip_option(text: str) -> float | str | None:
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if value in ("none", "off"):
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        fail(
            f"--clip must be 'auto', 'none' or a positive number, got {text!r}",
            "e.g. --clip 1.0 bounds the global gradient norm at 1 (the usual choice for RNNs)",
        )
    return number


@contextmanager
def _as_main(script: Path, args: Sequence[str]) -> Iterator[None]:
    """Run with ``sys.argv`` and ``sys.path[0]`` as ``python SCRIPT ARGS`` would set them."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        yield
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message") prints it and exits with 1
    return 1


def _print_script_traceback(exc: BaseException, script: Path) -> None:
    """The script's own traceback, without the frames of gradguard and runpy above it."""
    frames = traceback.extract_tb(exc.__traceback__)
    start = next(
        (i for i, f in enumerate(frames) if Path(f.filename).resolve() == script.resolve()), 0
    )
    print("Traceback (most recent call last):", file=sys.stderr)
    print("".join(traceback.format_list(frames[start:])), end="", file=sys.stderr)
    print("".join(traceback.format_exception_only(type(exc), exc)), end="", file=sys.stderr)


def run(
    ctx: typer.Context,
    script: Annotated[
        Path,
        typer.Argument(
            metavar="SCRIPT",
            help="The training script, run as 'python SCRIPT ARGS...' would run it.",
            show_default=False,
        ),
    ],
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="JSONL log of the run [default: runs/gradguard-<time>-<pid>.jsonl].",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the --log file if it already exists.")
    ] = False,
    report: Annotated[
        bool, typer.Option("--report", help="Also build the HTML report beside the log.")
    ] = False,
    clip: Annotated[
        str,
        typer.Option(
            "--clip",
            help="'auto' (clip to the run's healthy scale when in trouble), 'none', or a fixed "
            "bound on the global gradient norm, e.g. 1.0.",
        ),
    ] = "auto",
    preset: Annotated[
        str, typer.Option("--preset", help="Detector preset: default, strict or textbook.")
    ] = "default",
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No live alert lines; only the summary at exit.")
    ] = False,
) -> None:
    """Run an unmodified training script with every optimizer step guarded.

    Global optimizer step hooks measure the gradients before each optimizer.step(), clip them,
    skip a step that would damage the weights (its gradients are dropped), back off or roll back
    when trouble repeats, and log every step. Options go before SCRIPT; everything after it is
    passed to the script. The summary is printed at exit, also after an error or Ctrl-C.
    A line at the start names the model the parameter names come from (or says why none was
    found), and a script that calls backward() again and again without optimizer.step() (it
    updates its weights by hand) is told that it is not protected.

    The loss is read from backward(): the sum of what it was called on since the last step,
    the loss whose gradient the step applies (under gradient accumulation the micro-batch
    losses, each divided by their count, add up to the batch loss); with
    optimizer.step(closure), the loss of the closure's first evaluation.

    Every option can also be set in the environment as GRADGUARD_<OPTION> (GRADGUARD_LOG,
    GRADGUARD_CLIP, GRADGUARD_PRESET, GRADGUARD_QUIET=1, GRADGUARD_REPORT=1); an option on
    the command line wins. Use these under torchrun, whose own parser rejects --log:
    GRADGUARD_LOG=run.jsonl torchrun --nproc-per-node 2 $(which gradguard) run train.py.
    Only rank 0 writes the log and prints alerts, notes and the summary.

    Exit codes: the script's own exit code (0 when it finishes); 3 when the guard stopped a run
    it could not rescue; 130 after Ctrl-C; 2 for a bad script path or option.
    """
    script_args = list(ctx.args)
    if not script.exists():
        fail(f"script {str(script)!r} does not exist", "check the path: gradguard run train.py")
    if not script.is_file():
        fail(
            f"{str(script)!r} is not a file", "pass the python file to run: gradguard run train.py"
        )
    if preset not in PRESETS:
        fail(f"--preset must be one of {PRESETS!r}, got {preset!r}", "the default is 'default'")
    bound = _clip_option(clip)
    path = log if log is not None else default_log()
    if path.exists() and path.is_dir():
        fail(f"--log {str(path)!r} is a folder", "pass a file name, e.g. --log runs/train.jsonl")
    if path.is_file() and path.stat().st_size > 0 and not force:
        fail(
            f"--log {str(path)!r} already exists (an earlier run's log?)",
            "pass --force to overwrite it, or choose another --log path",
        )

    from gradguard.errors import TrainingDivergedError
    from gradguard.integrations import GlobalGuard
    from gradguard.integrations.hooks import is_launch_rank_zero
    from gradguard.sinks import ConsoleSink, LoggingSink, RankZeroSink, Sink

    # Under torchrun only rank 0 speaks: RANK is set before the script initialises the process
    # group, and RankZeroSink asks the group itself once it exists. --quiet: a logging sink that
    # tells only an abort stands in for the guard's default one, which would log warnings.
    console: list[Sink] = (
        [RankZeroSink(ConsoleSink(every=10**9))] if is_launch_rank_zero() and not quiet else []
    )
    if quiet:
        console = [LoggingSink(level=logging.ERROR)]
    meta = {"source": "gradguard run", "script": str(script), "argv": script_args}
    protection = GlobalGuard(
        log=path,
        sinks=console,  # alerts and interventions only
        metadata=meta,
        notify=_warn if quiet else _say,
        clip=bound,
        preset=preset,
    )
    code, ending = 0, "finished"
    with _as_main(script, script_args), protection:
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            code = _exit_code(exc)
            ending = "finished" if code == 0 else f"exited with code {code}"
        except KeyboardInterrupt:
            code, ending = EXIT_INTERRUPTED, "interrupted (Ctrl-C)"
        except TrainingDivergedError as exc:
            code, ending = EXIT_DIVERGED, "stopped by gradguard"
            if is_launch_rank_zero():  # every rank reached the same decision
                print(f"gradguard: {exc}", file=sys.stderr)
        except Exception as exc:  # the script's own error: show it as python would
            _print_script_traceback(exc, script)
            code, ending = 1, f"raised {type(exc).__name__}"
    reports = _build_reports(protection.logs) if report else []
    if is_launch_rank_zero():
        _print_summary(
            script,
            ending,
            protection.summary(),
            protection.logs,
            reports,
            backward_calls=protection.backward_calls,
        )
    raise typer.Exit(code)


def _say(line: str, severity: Severity) -> None:
    """A note of the guard (which model names the tensors, steps that never come), rank 0 only."""
    from gradguard.integrations.hooks import is_launch_rank_zero

    if is_launch_rank_zero():
        print(f"gradguard: {line}", file=sys.stderr, flush=True)


def _warn(line: str, severity: Severity) -> None:
    """``--quiet``: only the notes that say the run is not protected."""
    if severity is not Severity.INFO:
        _say(line, severity)


def _build_reports(logs: Sequence[Path]) -> list[Path]:
    from gradguard.report import build_report

    built = []
    for log in logs:
        try:
            built.append(build_report(log))
        except Exception as exc:  # the run's result matters more than its report
            print(f"gradguard: no report for {log}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return built


def _print_summary(
    script: Path,
    ending: str,
    summaries: Sequence[dict[str, Any]],
    logs: Sequence[Path],
    reports: Sequence[Path],
    *,
    backward_calls: int = 0,
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 110)
    if not summaries:
        line = f"gradguard: {script.name} {ending}; no optimizer stepped, nothing was guarded"
        if backward_calls:
            line += (
                f" (backward() ran {backward_calls} times: weights updated by the script itself "
                "are not protected)"
            )
        console.print(Text(f"{line}.", style="yellow"))
        return
    table = Table(title=f"gradguard: {script.name} {ending}", title_justify="left")
    for column in ("optimizer", "model", "steps", "clipped", "skipped", "backoffs", "rollbacks"):
        table.add_column(column, justify="left" if column in ("optimizer", "model") else "right")
    table.add_column("steps lost", justify="right")
    table.add_column("first warning", justify="right")
    for s in summaries:
        first = s["monitor"].get("first_alert_step")
        table.add_row(
            s["optimizer"],
            s["model"],
            str(s["steps"]),
            str(s["clipped"]),
            str(s["skipped"]),
            str(s["backoffs"]),
            str(s["rollbacks"]),
            str(s["steps_lost"]),
            "-" if first is None else f"step {first}",
        )
    console.print(table)
    for log in logs:
        console.print(f"log: {log}")
    for page in reports:
        console.print(f"report: {page}")
    if logs and not reports:
        console.print(Text(f"gradguard report {logs[0]}  builds the HTML report", style="dim"))
