"""The report's new sections in a real headless Chromium (skipped without one)."""

import re
from pathlib import Path

import _audit_helpers
import pytest
from test_audit_browser import chromium, load, run_chromium  # noqa: F401
from test_audit_report import parse

from sksim.audit.report import SECTIONS


@pytest.fixture(scope="module")
def issues_audit():
    return _audit_helpers.label_issues_audit()


def section(dom, key):
    """The text of the section ``key`` of the rendered DOM."""
    match = re.search(rf'<section id="{key}">(.*?)</section>', dom, re.S)
    assert match, key
    return match.group(1)


def test_new_sections_render_in_chromium(chromium, issues_audit, tmp_path):  # noqa: F811
    url = issues_audit.to_html(tmp_path / "report.html").resolve().as_uri()
    dom, console = load(chromium, tmp_path, url)
    assert console == []
    page = parse(dom)
    assert page.headings == [title for _, title in SECTIONS]
    assert page.links == []
    findings = section(dom, "findings")
    assert findings.count("<li>") >= 4 and "training labels look wrong" in findings
    issues = section(dom, "label_issues")
    assert "Planted noise: 3 training labels were flipped" in issues
    assert issues.count("<img") == 1 and "planted_flip" in issues
    assert issues.count("<tr>") == 20  # the top 20 (the header row has a style)
    for key in ("isolated", "support"):
        body = section(dom, key)
        assert body.count("<img") == 1 and body.count("<tr>") == 10, key
    summary = section(dom, "summary")
    assert "Time taken" in summary and "total (wall clock)" in summary
    shot = tmp_path / "report.png"
    run_chromium(
        chromium, tmp_path, "--window-size=1280,6000", f"--screenshot={shot}", url
    )
    data = Path(shot).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100_000
