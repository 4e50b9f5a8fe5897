"""The report page: one self-contained HTML file (inline CSS, images as data URIs, no script).

Every string that comes from the run (tensor names, messages, metadata, titles, paths) passes
through :func:`html.escape`; the page also carries a Content-Security-Policy that forbids
scripts and any outside request, so it opens offline and stays inert even if a string slipped
through.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Sequence
from html import escape

from gradguard.records import ActionKind, Reason, Severity, StepRecord
from gradguard.report.advisor import Advice
from gradguard.report.analysis_view import format_value
from gradguard.report.blocks import Block, Plot, Table
from gradguard.report.summary import RunSummary, record_nonfinite
from gradguard.sinks import RunLog, done_phrase, is_shown_intervention, shown_severity

__all__ = ["CSP", "MAX_EVENT_ROWS", "Page", "outcome", "render_page"]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_EVENT_ROWS = 300

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
header{background:#1d2330;color:#fff;padding:20px 24px}
header h1{margin:0 0 4px;font-size:24px}header p{margin:0;color:#c5cad6;font-size:14px}
header p.verdict{color:#fff;font-size:16px;font-weight:600;margin:0 0 6px}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;margin:0 0 12px}h3{font-size:16px;margin:12px 0 4px}
.outcome{font-size:17px;font-weight:600;padding:10px 14px;border-radius:6px;margin-bottom:12px}
.ok{background:#e3f4e6;color:#1b5e20}.rescued{background:#fff4d6;color:#7a4f00}
.bad{background:#fde2e1;color:#8e1b1b}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #e1e4ea;border-radius:6px;padding:8px 12px;min-width:140px}
.card b{display:block;font-size:18px}.card span{font-size:12px;color:#5b6275}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eceef2}
figcaption{font-size:13px;color:#5b6275}
table{border-collapse:collapse;min-width:50%;font-size:13px;margin:6px 0 12px}
th,td{border-bottom:1px solid #e6e8ee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f6}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.advice{border-left:4px solid #4c9be8;padding:2px 12px;margin:10px 0}
.advice.warning{border-color:#f0a30a}.advice.critical{border-color:#d62728}
.sev{font-size:11px;text-transform:uppercase;font-weight:700;padding:1px 6px;border-radius:3px;
background:#e8ecf3}.sev.warning{background:#fdecc8}.sev.critical{background:#f9d0ce}
pre{background:#f5f6f8;padding:8px;overflow-x:auto;font-size:12px}
footer{color:#5b6275;font-size:12px;text-align:center;padding:12px}
"""


@dataclasses.dataclass(frozen=True)
class Page:
    """Everything the page shows, computed beforehand.

    Attributes:
        title: the page title (plain text).
        log: the log read back.
        summary: its summary.
        advice: the advisor's output.
        figures: the run's plots, in order.
        analysis: blocks of the analysis section (empty: section left out).
    """

    title: str
    log: RunLog
    summary: RunSummary
    advice: Sequence[Advice]
    figures: Sequence[Plot]
    analysis: Sequence[Block]


def render_page(page: Page) -> str:
    """Render the report as one HTML string (every user string escaped)."""
    css, verdict = outcome(page.summary)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page.title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{escape(page.title)}</h1>"
        f'<p class="verdict">{escape(verdict)}</p><p>{_subtitle(page.log)}</p></header><main>',
        _summary_section(page, css, verdict),
    ]
    figures = [f'<section id="{plot.slug}">{_plot(plot)}</section>' for plot in page.figures]
    # The norm curve first, right under the outcome: it shows the whole story at a glance.
    parts += [*figures[:1], _advice_section(page.advice), *figures[1:]]
    parts.append(_events_section(page.log.records))
    if page.analysis:
        body = "".join(_block(b) for b in page.analysis)
        parts.append(f'<section id="analysis"><h2>Analysis</h2>{body}</section>')
    parts.append(_run_section(page.log))
    parts.append(
        "</main><footer>Written by gradguard from the JSONL log; open offline, no scripts."
        "</footer></body></html>"
    )
    return "\n".join(parts)


def _subtitle(log: RunLog) -> str:
    header = log.header
    return (
        f"log <code>{escape(str(log.path))}</code> &middot; started {escape(header.started)} "
        f"&middot; gradguard {escape(header.gradguard_version)} &middot; schema "
        f"{header.schema_version}"
    )


def outcome(summary: RunSummary) -> tuple[str, str]:
    """The verdict on a run in one sentence, and its style (``ok``, ``rescued`` or ``bad``).

    "Finite" is not "trained": the first, best and final loss decide whether the run learned,
    and a run that did not is told so first, with the learning rate the log supports.
    """
    last = summary.last
    if last is None:
        return "bad", "The log holds no steps."
    if last.action is ActionKind.ABORT:
        return "bad", f"The run was aborted at step {last.step}: {last.message}"
    if record_nonfinite(last) and last.applied:
        return "bad", (
            f"The run diverged: NaN/Inf first at step {summary.first_nonfinite_step}, "
            f"still non-finite at its last step {last.step}."
        )
    tally, progress = summary.tally, summary.progress
    losses = ""
    if progress.first is not None and progress.final is not None and progress.best is not None:
        losses = (
            f"loss {_num(progress.first)} at the start, {_num(progress.final)} at the end, best "
            f"{_num(progress.best[1])} at step {progress.best[0]}"
        )
    lost = (
        f"; {tally.steps_lost} of {tally.steps} steps lost to rollbacks" if tally.steps_lost else ""
    )
    rate = summary.rate
    to_try = ""
    if rate.suggested is not None:
        why = (
            "the rate gradguard's back-offs held without faults"
            if rate.held is not None and not rate.faults_after
            else "a tenth of the rate that failed; a guess"
        )
        to_try = f" Learning rate to try: {rate.suggested:g} ({why})."
    acted = summary.interventions - tally.scaler_overflows
    warned = sum(n for s, n in tally.alerts.items() if s.rank >= Severity.WARNING.rank)
    if progress.verdict == "did_not_train":
        if not (acted or warned or tally.steps_lost):
            return "bad", f"Did not train, with no instability seen: {losses}."
        return "bad", f"Kept finite but did not train: {losses}{lost}.{to_try}"
    if progress.verdict == "lost_ground":
        return "bad", f"Trained, then lost most of it: {losses}{lost}.{to_try}"
    routine = (
        f" ({tally.scaler_overflows} routine GradScaler overflow(s) skipped)"
        if tally.scaler_overflows
        else ""
    )
    trained = f"; {losses}" if losses else ""
    if acted or warned:
        return "rescued", (
            f"Rescued: gradguard intervened on {acted} of {summary.steps} steps, {warned} "
            f"warning(s){lost}; the run ended finite and trained{trained}.{routine}{to_try}"
        )
    return "ok", (
        f"Healthy run: {summary.steps} steps without warnings or interventions{trained}.{routine}"
    )


def _summary_section(page: Page, css: str, sentence: str) -> str:
    summary = page.summary
    warning = summary.first_warning
    cards = [
        (str(summary.steps), "steps logged"),
        (str(summary.interventions), "interventions"),
        (str(sum(summary.alerts_by_severity.values())), _alerts_label(summary)),
        (
            "-" if warning is None else str(warning.step),
            "first warning" + ("" if warning is None else f" ({warning.kind.value})"),
        ),
        (_opt(summary.first_nonfinite_step), "first NaN/Inf step"),
        (_num(summary.final_loss), "final loss"),
        (
            "-" if summary.max_norm is None else _num(summary.max_norm[1]),
            "largest gradient norm"
            + ("" if summary.max_norm is None else f" (step {summary.max_norm[0]})"),
        ),
        (str(summary.steps_lost), "steps lost to rollbacks"),
    ]
    card_html = "".join(
        f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in cards
    )
    tally = summary.tally
    counted = [
        ("applied", tally.applied),
        ("clipped", tally.clipped),
        ("skipped (not applied)", tally.skipped),
        ("of them GradScaler overflows (routine)", tally.scaler_overflows),
        ("learning-rate back-offs", tally.backoffs),
        ("rollbacks", tally.rollbacks),
        ("steps lost to rollbacks", tally.steps_lost),
        ("optimizer-state resets", tally.resets),
    ]
    rows = [(what, str(n)) for what, n in counted if n or what in ("applied", "skipped")]
    rows += [
        (f"{s.value} alerts", str(tally.alerts[s])) for s in reversed(Severity) if s in tally.alerts
    ]
    if tally.alerts_with_repeats != sum(tally.alerts.values()):
        rows.append(("alerts with repeats (every alert raised)", str(tally.alerts_with_repeats)))
    table = _table(Table("Counts (the same as the console's)", ("what", "steps"), tuple(rows)))
    note = ""
    if page.log.skipped_last_line is not None:
        note = (
            f"<p>Line {page.log.skipped_last_line} of the log was cut off (the run stopped "
            "while writing it) and was skipped.</p>"
        )
    skipped = page.log.skipped_summary()
    if skipped is not None:
        note += (
            f"<p>{escape(skipped)}. These lines are not valid step records and are left out.</p>"
        )
    return (
        f'<section id="summary"><h2>Outcome</h2><div class="outcome {css}">'
        f'{escape(sentence)}</div><div class="cards">{card_html}</div>{table}{note}</section>'
    )


def _advice_section(advice: Sequence[Advice]) -> str:
    items = []
    for item in advice:
        evidence = "".join(f"<li>{escape(e)}</li>" for e in item.evidence)
        items.append(
            f'<div class="advice {item.severity.value}"><h3>'
            f'<span class="sev {item.severity.value}">{item.severity.value}</span> '
            f"{escape(item.title)} <small>(confidence: {escape(item.confidence)})</small></h3>"
            f"<p>{escape(item.action)}</p>"
            f"<ul>{evidence}</ul></div>"
        )
    return f'<section id="advice"><h2>Advisor</h2>{"".join(items)}</section>'


_NOTED = (Reason.REGIME_CHANGE, Reason.RECOVERED)
"""Reasons of applied, unclipped steps that are still events: a new loss level, a rate restored."""


def _events_section(records: Sequence[StepRecord]) -> str:
    rows: list[tuple[str, ...]] = []
    total = 0
    for record in records:
        events: list[tuple[str, str]] = []
        # a GradScaler overflow skip is counted above, not an event
        if is_shown_intervention(record) or record.reason in _NOTED:
            detail = record.message
            if record.rolled_back_to is not None:
                detail = (
                    f"back to step {record.rolled_back_to}, {record.steps_lost} steps lost. "
                    + detail
                )
            events.append((f"{record.action.value} ({record.reason.value})", detail))
        for alert in record.alerts:
            severity = shown_severity(record, alert)  # a GradScaler overflow is routine: info
            if severity.rank >= Severity.WARNING.rank:
                culprits = f" [{', '.join(alert.culprits)}]" if alert.culprits else ""
                done = done_phrase(record)
                done = f" gradguard {done}." if done else ""
                events.append(
                    (f"{severity.value} {alert.kind.value}", alert.message + culprits + done)
                )
        for event, detail in events:
            total += 1
            if len(rows) < MAX_EVENT_ROWS:
                rows.append(
                    (str(record.step), event, detail, _num(record.total_norm), _num(record.loss))
                )
    if not rows:
        return (
            '<section id="events"><h2>Events</h2><p>No warnings and no interventions other '
            "than clipping.</p></section>"
        )
    table = Table(
        "Warnings and interventions (clipping is counted above, not listed)",
        ("step", "event", "detail", "grad norm", "loss"),
        tuple(rows),
        omitted=total - len(rows),
    )
    return f'<section id="events"><h2>Events</h2>{_table(table)}</section>'


def _run_section(log: RunLog) -> str:
    metadata = {k: v for k, v in log.header.metadata.items() if k != "analysis"}
    rows = tuple((str(k), format_value(v)) for k, v in metadata.items())
    body = (
        _table(Table("Run metadata", ("key", "value"), rows))
        if rows
        else "<p>No run metadata in the log header.</p>"
    )
    return f'<section id="run"><h2>Run</h2>{body}</section>'


def _block(block: Block) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Plot):
        return _plot(block)
    if block.pre:
        return f"<pre>{escape(block.text)}</pre>"
    return f"<p>{escape(block.text)}</p>"


def _plot(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f"<h2>{escape(plot.title)}</h2><figure>"
        f'<img src="data:image/png;base64,{data}" alt="{escape(plot.title)}">'
        f"<figcaption>{escape(plot.slug)}.png</figcaption></figure>"
    )


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    more = f"<p>{table.omitted} more rows not shown.</p>" if table.omitted else ""
    return (
        f"<h3>{escape(table.title)}</h3><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{more}"
    )


def _alerts_label(summary: RunSummary) -> str:
    """The alerts card's label, with the total when an incident repeated its alerts."""
    told = sum(summary.alerts_by_severity.values())
    if summary.alerts_with_repeats == told:
        return "alerts"
    return f"alerts ({summary.alerts_with_repeats} with repeats)"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else repr(value)


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)
