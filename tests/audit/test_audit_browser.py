"""The HTML report in a real headless Chromium (skipped when none is installed).

The test set-up installs Debian's browser when it can
(``apt-get install -y chromium``); tests never install anything.
"""

import shutil
import subprocess
from pathlib import Path

import _audit_helpers
import pytest
from test_audit_report import parse

from sksim.audit.report import SECTIONS


@pytest.fixture(scope="module")
def digit_images():
    return _audit_helpers.digit_images()


@pytest.fixture(scope="module")
def small_audit():
    return _audit_helpers.small_audit()


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium():
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium():
    found = find_chromium()
    if found is None:
        pytest.skip(
            "no chromium browser found (/usr/bin/chromium): install Debian's with "
            "`apt-get install -y chromium` to run the browser test"
        )
    return found


def run_chromium(chromium, tmp_path, *args):
    profile = tmp_path / "profile"
    completed = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed


def load(chromium, tmp_path, url):
    """The DOM after loading, and the console messages Chromium logged."""
    completed = run_chromium(
        chromium, tmp_path, "--enable-logging=stderr", "--dump-dom", url
    )
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]
    return completed.stdout, console


def test_console_errors_are_seen(chromium, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefined_function()</script></body></html>")
    _, console = load(chromium, tmp_path, bad.resolve().as_uri())
    assert any("Uncaught ReferenceError" in line for line in console)


def test_report_renders_in_chromium(chromium, small_audit, tmp_path):
    report = small_audit.to_html(tmp_path / "report.html").resolve()
    url = report.as_uri()
    dom, console = load(chromium, tmp_path, url)
    assert console == []
    page = parse(dom)
    assert page.headings == [title for _, title in SECTIONS]
    assert page.images and all(
        src.startswith("data:image/png;base64,") for src in page.images
    )
    assert page.links == []
    shot = tmp_path / "report.png"
    run_chromium(
        chromium, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", url
    )
    data = Path(shot).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000


GEOMETRY = """<script>
var rows = [];
document.querySelectorAll("nav a").forEach(function (a) {
  var section = document.getElementById(a.getAttribute("href").slice(1));
  section.scrollIntoView();
  var heading = section.querySelector("h2").getBoundingClientRect();
  var nav = document.querySelector("nav").getBoundingClientRect();
  rows.push(section.id + " " + heading.top + " " + nav.bottom);
});
var out = document.createElement("pre");
out.id = "geometry";
out.textContent = rows.join(";");
document.body.appendChild(out);
</script></body>"""


def test_a_section_jumped_to_shows_its_heading_below_the_sticky_nav(
    chromium, small_audit, tmp_path
):
    """The sticky navigation bar covered the heading of every section its links
    jumped to (the headings at 29 to 64 px, the bar down to 54 px)."""
    page = small_audit.to_html(tmp_path / "report.html").read_text()
    measured = tmp_path / "geometry.html"
    measured.write_text(page.replace("</body>", GEOMETRY))
    dom = run_chromium(
        chromium,
        tmp_path,
        "--window-size=1280,800",
        "--dump-dom",
        measured.resolve().as_uri(),
    ).stdout
    rows = dom.split('<pre id="geometry">')[1].split("</pre>")[0].split(";")
    assert len(rows) == len(SECTIONS)
    for row in rows:
        section, heading_top, nav_bottom = row.split()
        assert float(heading_top) >= float(nav_bottom), section
