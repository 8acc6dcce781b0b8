"""The report in a real browser: headless Chromium loads it with no console error, the controls work, and a
screenshot is taken. Skipped (with the reason) where no Chromium is installed; `make test` installs Debian's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labelaudit.report import render_report

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on PATH (Debian: apt-get install "
                                                         "chromium; `make test` installs it when run as root)")

# Runs after the report's own script: drives the controls and logs one line; any failure throws, which the
# browser reports as an uncaught error on its console.
EXERCISE = """<script>
(function () {
  function check(ok, what) { if (!ok) { throw new Error("report check failed: " + what); } }
  function key(k) { document.dispatchEvent(new KeyboardEvent("keydown", {key: k, bubbles: true})); }
  var cases = document.querySelectorAll("section.case");
  check(cases.length === 3, "three cases");
  check(document.getElementById("shown").textContent === "showing 3 of 3 cases", "count line");
  key("j");
  check(cases[0].classList.contains("active"), "j activates the first case");
  key("j");
  check(document.querySelector("section.case.active") === cases[1], "j moves to the next case");
  key("Enter");
  var zoom = document.getElementById("zoom");
  check(zoom.open && zoom.querySelector(".view img.base"), "Enter enlarges the slice");
  key("ArrowRight");
  check(zoom.open, "arrows step through slices in the enlarged view");
  key("Escape");
  check(!zoom.open, "Esc closes");
  document.querySelector("section.case .tile").click();
  check(zoom.open && zoom.querySelector(".view img.heat"), "a click enlarges the slice, noise map and all");
  zoom.close();
  var copy = document.querySelector("button.copy");
  check(copy && copy.parentNode.querySelector("pre.cmd"), "each command has a copy button");
  copy.click();  // an error in the copy path would show on the console
  key("o");
  check(document.body.classList.contains("heat-on"), "o shows the noise map");
  var f = document.getElementById("f-kind");
  f.value = "missing_structure"; f.dispatchEvent(new Event("change"));
  var visible = Array.prototype.filter.call(cases, function (c) { return !c.hidden; });
  check(visible.length === 1 && visible[0].getAttribute("data-case") === "case_002", "kind filter");
  check(document.getElementById("shown").textContent === "showing 1 of 3 cases", "count after filtering");
  f.value = ""; f.dispatchEvent(new Event("change"));
  var s = document.getElementById("sort");
  s.value = "case"; s.dispatchEvent(new Event("change"));
  var ids = Array.prototype.map.call(document.querySelectorAll("section.case"), function (c) {
    return c.getAttribute("data-case");
  });
  check(ids.join("|") === ids.slice().sort(function (a, b) { return a.localeCompare(b, undefined, {numeric: true}); })
        .join("|"), "sort by case id");
  var evil = Array.prototype.filter.call(document.querySelectorAll("section.case h3"), function (h) {
    return h.textContent === EVIL_TEXT;
  });
  check(evil.length === 1, "the script-like case id shows as text");
  key("Escape");
  console.log("LABELAUDIT-REPORT-OK");
}());
</script></body>"""


def _run_chromium(page: Path, shot: Path, tmp_path: Path, width: int = 1440, height: int = 900) -> str:
    """Load `page` in headless Chromium, screenshot it, return the console lines of its log."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
            f"--screenshot={shot}", f"--window-size={width},{height}", "--enable-logging=stderr", "--v=0",
            page.resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=90)
    log = done.stdout + done.stderr
    return "\n".join(line for line in log.splitlines() if ":CONSOLE" in line)


def _page(tmp_path: Path, extra: str, make_audit, evil: str) -> Path:
    audit = make_audit([evil, "case_002", "case_010"])
    html = render_report(audit).replace("</body>", extra.replace("EVIL_TEXT", '"\\u003cscript\\u003ealert(1)\\u003c/script\\u003e"'))
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def test_report_loads_without_console_errors_and_its_controls_work(tmp_path, make_audit, evil):
    shot = tmp_path / "report.png"
    console = _run_chromium(_page(tmp_path, EXERCISE, make_audit, evil), shot, tmp_path)
    assert "LABELAUDIT-REPORT-OK" in console, console
    others = [line for line in console.splitlines() if "LABELAUDIT-REPORT-OK" not in line]
    assert others == [], others
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000


def test_the_console_check_catches_an_error(tmp_path, make_audit, evil):
    # the detector itself: a page that throws must show up on the console log
    console = _run_chromium(_page(tmp_path, '<script>throw new Error("planted");</script></body>', make_audit, evil),
                            tmp_path / "bad.png", tmp_path, width=800, height=600)
    assert "Uncaught Error: planted" in console
