"""Open a gradguard report in a real headless Chromium: it must load with no console message.

Builds the report of the synthetic test run (or of ``--log``), then runs Chromium twice: once
with ``--dump-dom`` to check the rendered document (every section present, every figure an
embedded PNG, no ``<script>`` element even though a tensor is named
``<script>alert(1)</script>``), once with ``--screenshot`` to save a picture for the README.
Chromium's console is read from its log (``--enable-logging=stderr``): any ``CONSOLE`` line (a
script error, a blocked request, a Content-Security-Policy violation) fails the check.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``). Not part of pytest,
which checks the HTML structurally without a browser.

Usage:
    .venv/bin/python scripts/check_report_in_browser.py [--log LOG] [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("summary", "advice", "gradient-norm", "loss", "culprits", "clip-lr", "events", "run")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
)


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.scripts = 0
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(str(values.get("src", "")))


def run_chromium(chromium: str, url: str, extra: list[str]) -> tuple[str, list[str]]:
    """Run Chromium on ``url``; return its stdout and the console lines of its log."""
    with tempfile.TemporaryDirectory(prefix="gg-chromium-") as profile:
        proc = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"chromium exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="a gradguard JSONL log (default: synthetic run)")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "report-screenshot.png")
    parser.add_argument("--window", default="1280,1900", help="screenshot size W,H in pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    if shutil.which(args.chromium) is None:
        print(f"error: {args.chromium!r} not found; install it: apt-get install -y chromium")
        return 2

    sys.path.insert(0, str(ROOT))
    from gradguard.report import build_report

    with tempfile.TemporaryDirectory(prefix="gg-report-") as tmp:
        log = args.log
        if log is None:
            from tests.report.synthetic import write_synthetic_log

            log = write_synthetic_log(Path(tmp) / "synthetic.jsonl")
        report = build_report(log, Path(tmp) / "report")
        url = report.resolve().as_uri()

        dom_text, console = run_chromium(args.chromium, url, ["--dump-dom"])
        dom = _Dom()
        dom.feed(dom_text)
        problems = [f"console: {line}" for line in console]
        missing = [s for s in SECTIONS if s not in dom.ids]
        if missing:
            problems.append(f"sections missing from the rendered DOM: {missing}")
        if dom.scripts:
            problems.append(f"{dom.scripts} <script> element(s) in the rendered DOM")
        not_embedded = [src[:40] for src in dom.images if not src.startswith("data:image/png")]
        if not dom.images or not_embedded:
            problems.append(f"images not embedded as PNG data: {not_embedded or 'none found'}")

        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        _, console = run_chromium(
            args.chromium,
            url,
            [f"--screenshot={args.screenshot.resolve()}", f"--window-size={args.window}"],
        )
        problems += [f"console (screenshot run): {line}" for line in console]
        if not args.screenshot.is_file() or args.screenshot.stat().st_size < 10_000:
            problems.append(f"no usable screenshot at {args.screenshot}")

    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    print(
        f"OK: {len(dom.ids & set(SECTIONS))} sections, {len(dom.images)} embedded images, "
        f"0 scripts, 0 console messages; screenshot {args.screenshot} "
        f"({args.screenshot.stat().st_size // 1024} KiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
