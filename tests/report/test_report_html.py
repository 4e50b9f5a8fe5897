"""build_report: files written, page structure, embedded images, every user string escaped."""

from __future__ import annotations

import base64
import html
import html.parser
from pathlib import Path

import pytest

from gradguard.errors import ConfigError, LogFormatError
from gradguard.records import ActionKind, Reason, StepRecord
from gradguard.report import REPORT_NAME, build_report, default_report_dir
from gradguard.sinks import JsonlSink
from tests.report.synthetic import EVIL, ruined_mlp_records, write_synthetic_log

PNG = b"\x89PNG\r\n\x1a\n"
SECTIONS = {"summary", "advice", "gradient-norm", "loss", "culprits", "clip-lr", "events", "run"}


class Dom(html.parser.HTMLParser):
    """Collects what the tests check: ids, tags, image sources, text, the CSP."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.csp = ""
        self.section_order: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append(tag)
        if values.get("id"):
            self.ids.append(str(values["id"]))
            if tag == "section":
                self.section_order.append(str(values["id"]))
        if tag == "img":
            self.images.append(str(values["src"]))
        if tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = str(values["content"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Dom]:
    folder = tmp_path_factory.mktemp("report")
    log = write_synthetic_log(folder / "run.jsonl")
    path = build_report(
        log,
        analysis={"depth_profile": {"signal": [16, 8, 4, 2, 1], "layers": 5}},
        title=f"run {EVIL}",
    )
    text = path.read_text(encoding="utf-8")
    dom = Dom()
    dom.feed(text)
    return path, text, dom


def test_files_beside_the_page(report: tuple[Path, str, Dom]) -> None:
    path, _, _ = report
    assert path.name == REPORT_NAME
    assert path.parent == default_report_dir(path.parent.parent / "run.jsonl")
    names = {p.name for p in path.parent.iterdir()}
    assert names == {
        REPORT_NAME,
        "gradient-norm.png",
        "loss.png",
        "culprits.png",
        "clip-lr.png",
        "analysis-bptt-profile.png",
        "analysis-depth-profile.png",
    }
    for png in path.parent.glob("*.png"):
        assert png.read_bytes().startswith(PNG)


def test_sections_and_order(report: tuple[Path, str, Dom]) -> None:
    _, _, dom = report
    assert SECTIONS | {"analysis"} <= set(dom.ids)
    assert len(dom.ids) == len(set(dom.ids))
    # Outcome, then the norm curve, then the advisor.
    assert dom.section_order[:3] == ["summary", "gradient-norm", "advice"]


def test_images_are_embedded_pngs(report: tuple[Path, str, Dom]) -> None:
    path, _, dom = report
    assert len(dom.images) == 6
    embedded = set()
    for src in dom.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        embedded.add(base64.b64decode(src[len(prefix) :], validate=True))
    on_disk = {p.read_bytes() for p in path.parent.glob("*.png")}
    assert embedded == on_disk


def test_self_contained_and_inert(report: tuple[Path, str, Dom]) -> None:
    _, text, dom = report
    assert "script" not in dom.tags
    assert dom.csp == "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    for attribute in ('href="http', "src='http", 'src="http', "@import", "url("):
        assert attribute not in text


def test_user_strings_are_escaped(report: tuple[Path, str, Dom]) -> None:
    _, text, dom = report
    assert "<script>" not in text
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    # In the title, the header, an alert message, a skip message, a culprit list, metadata.
    assert text.count(escaped) >= 6
    joined = "".join(dom.text)
    assert f"run {EVIL}" in joined  # the parser gives the original text back
    assert f"gradient of {EVIL} is NaN; step skipped" in joined


def test_outcome_advice_and_events(report: tuple[Path, str, Dom]) -> None:
    _, _, dom = report
    joined = " ".join(dom.text)
    verdict = "Rescued: gradguard intervened on 14 of 60 steps, 9 warning(s); 7 of 60 steps lost"
    assert verdict in joined
    assert "Restart with the learning rate at about 0.005 (it started at 0.01)" in joined
    assert "first at step 36" in joined
    assert "back to step 30, 7 steps lost." in joined
    assert "Sequence length T = 150 (> 100)." in joined


def test_analysis_from_metadata_and_argument(report: tuple[Path, str, Dom]) -> None:
    _, _, dom = report
    joined = " ".join(dom.text)
    assert "explosion_table" in joined
    assert "growth_factor" in joined
    assert "depth_profile: signal" in joined


def test_truncated_log_is_noted(tmp_path: Path) -> None:
    log = write_synthetic_log(tmp_path / "run.jsonl", metadata={})
    data = log.read_bytes()
    log.write_bytes(data[:-20])
    text = build_report(log, tmp_path / "out").read_text(encoding="utf-8")
    assert "Line 61 of the log was cut off" in text
    assert 'id="analysis"' not in text


def test_header_only_log(tmp_path: Path) -> None:
    log = tmp_path / "empty.jsonl"
    JsonlSink(log).close()
    text = build_report(log, tmp_path / "out").read_text(encoding="utf-8")
    assert "The log holds no steps." in text


def test_healthy_log(tmp_path: Path) -> None:
    log = tmp_path / "ok.jsonl"
    with JsonlSink(log) as sink:
        for i in range(30):
            loss = 2.0 * 0.9**i
            sink.write(StepRecord(i, ActionKind.PROCEED, Reason.HEALTHY, loss=loss, total_norm=0.1))
    text = build_report(log, tmp_path / "out").read_text(encoding="utf-8")
    # first and final: medians of the first and last 3 losses (a tenth of 30)
    verdict = "Healthy run: 30 steps without warnings or interventions; loss 1.8 at the start, "
    assert verdict + "0.1047 at the end, best 0.1436 at step 25." in text
    assert "No instability seen" in text


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "missing.jsonl", tmp_path / "out")
    (tmp_path / "x.jsonl").write_text("not a log\n", encoding="utf-8")
    with pytest.raises(LogFormatError):
        build_report(tmp_path / "x.jsonl", tmp_path / "out")
    log = tmp_path / "ok.jsonl"
    JsonlSink(log).close()
    (tmp_path / "file").write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a folder"):
        build_report(log, tmp_path / "file")


def test_a_new_loss_level_and_a_restored_rate_are_listed_as_events(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    with JsonlSink(log) as sink:
        for step in range(5):
            sink.write(StepRecord(step, ActionKind.PROCEED, Reason.HEALTHY, "ok", loss=1.0))
        sink.write(
            StepRecord(5, ActionKind.PROCEED, Reason.REGIME_CHANGE, "the data changed", loss=30.0)
        )
        sink.write(
            StepRecord(6, ActionKind.PROCEED, Reason.RECOVERED, "scale raised to 1", loss=29.0)
        )
    dom = Dom()
    dom.feed(build_report(log, tmp_path / "out").read_text(encoding="utf-8"))
    joined = " ".join(dom.text)
    assert "proceed (regime_change)" in joined and "the data changed" in joined
    assert "proceed (recovered)" in joined and "scale raised to 1" in joined


def _verdict(page: str) -> str:
    """The first line under the title: the header's verdict paragraph."""
    start = page.index('<p class="verdict">') + len('<p class="verdict">')
    return html.unescape(page[start : page.index("</p>", start)])


def test_a_run_that_did_not_train_says_so_first_with_the_rate_to_try(tmp_path: Path) -> None:
    log = tmp_path / "ruined.jsonl"
    with JsonlSink(log) as sink:
        for record in ruined_mlp_records():
            sink.write(record)
    page = build_report(log, tmp_path / "out").read_text(encoding="utf-8")
    header = page[page.index("<header>") : page.index("</header>")]
    assert header.index("<h1>") < header.index('class="verdict"')  # right under the title
    verdict = _verdict(page)
    assert verdict.startswith("Kept finite but did not train: loss 2.3")
    assert "213 of 300 steps lost to rollbacks" in verdict
    assert verdict.endswith(
        "Learning rate to try: 0.0012 (the rate gradguard's back-offs held without faults)."
    )
    assert "the run ended finite" not in page
    assert 'class="outcome bad"' in page
