"""Build the HTML report of a run from its JSONL log."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradguard.errors import ConfigError
from gradguard.report import figures
from gradguard.report.advisor import advise
from gradguard.report.analysis_view import analysis_blocks
from gradguard.report.blocks import Plot
from gradguard.report.digest import RunDigest
from gradguard.report.page import Page, render_page
from gradguard.report.summary import RunSummary, summarize
from gradguard.sinks import LogStream

__all__ = ["REPORT_NAME", "BuiltReport", "build_report", "default_report_dir", "write_report"]

REPORT_NAME = "report.html"


def default_report_dir(log_path: str | os.PathLike[str]) -> Path:
    """``<log folder>/<log stem>-report``: where the report goes when no folder is given."""
    path = Path(log_path)
    return path.with_name(f"{path.stem}-report")


@dataclasses.dataclass(frozen=True)
class BuiltReport:
    """What :func:`write_report` wrote and what it read.

    Attributes:
        path: the ``report.html`` written.
        summary: the run's summary (counts over every record of the log).
        skipped: ``"3 lines skipped: line 17: ..."`` when lines of the log were not valid
            records and were left out, else ``None``.
    """

    path: Path
    summary: RunSummary
    skipped: str | None


def build_report(
    log_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    analysis: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Read a JSONL log and write ``report.html`` and its PNG figures into ``out_dir``.

    The page is self-contained: the figures are embedded as data URIs (the PNG files beside it
    are copies for other uses), the styles are inline and there is no script, so it opens
    offline. It shows the outcome, the advisor's remedies with their evidence, the gradient
    norm on a log scale with alerts and interventions, the loss, a per-tensor culprit heat map,
    the clip coefficient and learning rate, a table of events, analysis results and the run
    metadata. The log is read once, record by record: a million-step log takes seconds and
    little memory (see :func:`write_report`).

    Args:
        log_path: a log written by :class:`~gradguard.sinks.JsonlSink`.
        out_dir: folder for the report (created); ``<log folder>/<log stem>-report`` by default.
        analysis: analysis results by name as plain dicts or lists (e.g. ``to_dict()`` of the
            analysis functions), added to those stored under ``metadata["analysis"]`` of the log
            header; the argument wins on equal names. See
            :mod:`gradguard.report.analysis_view` for how shapes are drawn.
        title: the page title; ``"gradguard report: <log name>"`` by default.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``log_path`` does not exist.
        LogFormatError: ``log_path`` is not a gradguard log.
        ConfigError: ``out_dir`` exists and is not a folder.
    """
    return write_report(log_path, out_dir, analysis=analysis, title=title).path


def write_report(
    log_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    analysis: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> BuiltReport:
    """:func:`build_report`, also returning the summary and the skipped lines it found.

    One pass over the log feeds both the summary (counts over every record) and a
    :class:`~gradguard.report.digest.RunDigest`: the plots are drawn from curves downsampled
    per bucket of steps (min and max kept, so spikes show), the events table and the advisor
    read every event record, and healthy records are dropped as soon as they are counted.
    Lines that are not valid records are skipped and noted on the page.

    Args and Raises: as :func:`build_report`.
    """
    out = Path(out_dir) if out_dir is not None else default_report_dir(log_path)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"report folder {str(out)!r} exists and is not a folder; pass another -o/out_dir."
        )
    digest = RunDigest()
    with LogStream(log_path) as stream:
        summary = summarize(digest.feed(stream))
    log = stream.run_log(digest.records())  # the events and their context; summary counted all
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    stored = log.header.metadata.get("analysis")
    if isinstance(stored, Mapping):
        results.update(stored)
    results.update(analysis or {})
    plots = [
        Plot("gradient-norm", "Gradient norm", figures.norm_figure(digest)),
        Plot("loss", "Loss", figures.loss_figure(digest)),
        Plot("culprits", "Culprits", figures.culprit_heatmap(digest)),
        Plot("clip-lr", "Clip coefficient and learning rate", figures.clip_lr_figure(digest)),
    ]
    blocks = analysis_blocks(results)
    for plot in plots + [b for b in blocks if isinstance(b, Plot)]:
        (out / f"{plot.slug}.png").write_bytes(plot.png)
    page = Page(
        title=title if title is not None else f"gradguard report: {log.path.name}",
        log=log,
        summary=summary,
        advice=advise(log.records, log.header.metadata, summary, analysis=results),
        figures=plots,
        analysis=blocks,
    )
    target = out / REPORT_NAME
    target.write_text(render_page(page), encoding="utf-8")
    return BuiltReport(path=target, summary=summary, skipped=log.skipped_summary())
