"""The HTML report: Markdown emphasis rendered, markup escaped, and a real sweep report, opened in
headless Chromium at 1280 px, fits the window with every table scrolling in its own box.

The browser tests need Debian's ``chromium`` (.ci/run installs it). Without it they are skipped,
except under CI (the CI variable set), where a missing browser is a failure.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantlab import report as report_module
from quantlab.evaluation.sweep import SweepOutput, sweep
from quantlab.report import Report, bar_figure
from quantlab.workload import DataSpec

pytestmark = pytest.mark.slow

WINDOW = (1280, 900)
# Headless, and nothing that would reach the network (closed here) or outlive the test.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]

# Run once the page and its images have loaded: what the browser laid out, as JSON in the DOM.
PROBE = """<script>window.addEventListener('load', function () {
  var root = document.documentElement, probe = document.createElement('pre');
  probe.id = 'quantlab-probe';
  probe.hidden = true;
  probe.textContent = JSON.stringify({
    innerWidth: window.innerWidth, clientWidth: root.clientWidth, scrollWidth: root.scrollWidth,
    text: document.body.innerText,
    strong: Array.prototype.map.call(document.querySelectorAll('strong'), function (e) { return e.textContent; }),
    tables: Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
      var box = t.parentElement, style = getComputedStyle(box);
      return {box: box.tagName, overflowX: style.overflowX, boxWidth: box.clientWidth,
              boxRight: box.getBoundingClientRect().right, tableWidth: t.scrollWidth};
    })
  });
  document.body.appendChild(probe);
});</script>"""


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)"
        if _ci():
            pytest.fail(f"{message}; under CI the browser tests must run")
        pytest.skip(message)
    return found


def _run_chromium(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory) -> Path:
    """A real sweep report of the embedded model on its embedded data (few samples: seconds)."""
    folder = tmp_path_factory.mktemp("sweep") / "report"
    sweep(calib=DataSpec(num_samples=64), heldout=DataSpec(num_samples=100), output=SweepOutput(folder, "best"),
          progress=False)
    return folder


@pytest.fixture(scope="module")
def rendered(sweep_report, chromium, tmp_path_factory) -> dict:
    """The sweep report.html as Chromium lays it out in a 1280 px window.

    The screenshot is of the report file itself and must show something (so the checks below are
    about a real rendering); the layout is read from a copy with a probe script appended.
    """
    work = tmp_path_factory.mktemp("chromium")
    page = sweep_report / "report.html"
    shot = work / "screenshot.png"
    _run_chromium(chromium, page, work / "profile-shot", f"--screenshot={shot}")
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (WINDOW[1], WINDOW[0]), f"screenshot is {image.shape[1]}x{image.shape[0]}"
    inked = float((image.min(axis=2) < 240).mean())
    colours = len(np.unique(image.reshape(-1, 3).astype(np.uint32) @ np.array([65536, 256, 1], np.uint32)))
    assert inked > 0.02 and colours > 64, f"blank screenshot: {inked:.1%} non-white pixels, {colours} colours"

    probed = work / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _run_chromium(chromium, probed, work / "profile-dom", "--dump-dom").stdout
    found = re.search(r'<pre id="quantlab-probe"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; dumped DOM ends with: {dom[-500:]!r}"
    return json.loads(html.unescape(found.group(1)))


def _html_of_paragraph(text: str) -> str:
    doc = Report("t")
    doc.paragraph(text)
    found = re.search(r"<p>(.*?)</p>", doc.to_html(), re.S)
    assert found
    return found.group(1)


def test_bold_in_a_paragraph_renders_as_strong():
    assert _html_of_paragraph("Best: **mse**.") == "Best: <strong>mse</strong>."


def test_italic_in_a_paragraph_renders_as_em():
    assert _html_of_paragraph("the *only* method") == "the <em>only</em> method"


def test_code_spans_stay_literal_while_emphasis_around_them_renders():
    assert (_html_of_paragraph("`a**b**` is **c**")
            == "<code>a**b**</code> is <strong>c</strong>")


def test_asterisks_between_spaces_are_not_emphasis():
    assert _html_of_paragraph("**2 * 3 * 4 = 24**") == "<strong>2 * 3 * 4 = 24</strong>"


def test_backslash_escaped_asterisks_are_literal():
    assert _html_of_paragraph(r"\*not emphasis\*") == "*not emphasis*"


def test_markup_inside_emphasis_and_code_is_escaped():
    assert (_html_of_paragraph("**<b>x</b>** and `<i>&`")
            == "<strong>&lt;b&gt;x&lt;/b&gt;</strong> and <code>&lt;i&gt;&amp;</code>")


def test_markdown_table_keeps_its_columns_when_a_tensor_name_has_a_pipe():
    doc = Report("t")
    doc.table(["tensor", "amax"], [["/a|b/Conv_output_0", 1.5]])
    [row] = [line for line in doc.to_markdown().splitlines() if "Conv_output_0" in line]
    assert len(re.split(r"(?<!\\)\|", row.strip().strip("|"))) == 2, row


def test_html_rerendered_from_the_markdown_and_pngs_matches_the_written_html(sweep_report, tmp_path):
    written = (sweep_report / "report.html").read_text(encoding="utf-8")
    copy = tmp_path / "copy"
    shutil.copytree(sweep_report, copy)
    (copy / "report.html").unlink()
    report_module.render_html_from_files(copy)
    assert (copy / "report.html").read_text(encoding="utf-8") == written


def test_html_rerendered_from_files_keeps_odd_tensor_names_intact(tmp_path):
    doc = Report("odd <names>")
    doc.heading("Tensors with *markup*")
    doc.paragraph("Best: **max**, see `a|b`.")
    doc.table(["tensor", "", "amax"], [["/a|b\\c*d*`e`<f>", "", 1.5], ["", "x | y", float("inf")]])
    doc.figure(bar_figure(["a"], {"s": [1.0]}, "bars.png", "a |caption| with *stars*", "y"))
    doc.write(tmp_path / "rep")
    written = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    report_module.render_html_from_files(tmp_path / "rep")
    assert (tmp_path / "rep" / "report.html").read_text(encoding="utf-8") == written


def test_sweep_report_in_chromium_is_no_wider_than_a_1280px_window(rendered):
    assert rendered["innerWidth"] == WINDOW[0]
    assert rendered["scrollWidth"] <= rendered["clientWidth"], rendered


def test_every_table_in_chromium_scrolls_inside_its_own_box(rendered):
    assert rendered["tables"], "the sweep report has tables"
    for table in rendered["tables"]:
        assert table["box"] == "DIV" and table["overflowX"] in ("auto", "scroll"), table
        assert table["boxRight"] <= rendered["clientWidth"], table


def test_every_table_of_the_sweep_report_fits_its_box_in_a_1280px_window(rendered):
    # The thresholds table (a long tensor name and seven methods per row) was wider than the page and
    # hid its last columns behind a scroll bar; its cells now wrap.
    for table in rendered["tables"]:
        assert table["tableWidth"] <= table["boxWidth"], table


def test_sweep_report_text_in_chromium_shows_no_literal_markdown_emphasis(rendered, sweep_report):
    best = json.loads((sweep_report / "report.json").read_text())["best"]
    assert "**" not in rendered["text"]
    assert best in rendered["strong"]
