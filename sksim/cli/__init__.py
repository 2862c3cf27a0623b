"""Command line: ``sksim audit`` (also ``python -m sksim audit``)."""

from ._main import main

__all__ = ["main"]
