"""Writing a benchmark's page without losing the reading written by hand."""

from pathlib import Path

READING = "## Reading (written by hand after the run)"
STALE = "*Written for an earlier run than the tables above: to be updated by hand.*"


def write_page(path, text: str) -> None:
    """Write ``text`` to ``path``, followed by the page's reading if it had one.

    The reading (from :data:`READING` on) describes an earlier run: a note
    (:data:`STALE`) says so until it is rewritten by hand.
    """
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if READING in old:
        body = old[old.index(READING) + len(READING) :].lstrip("\n")
        if not body.startswith(STALE):
            body = f"{STALE}\n\n{body}"
        text = f"{text.rstrip()}\n\n{READING}\n\n{body}"
    path.write_text(text)
