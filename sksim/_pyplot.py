"""``matplotlib.pyplot``, imported where a figure is drawn (the ``plot`` extra)."""

from __future__ import annotations

from types import ModuleType


def pyplot(drawer: str) -> ModuleType:
    """``matplotlib.pyplot``, or an ImportError saying that ``drawer`` needs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            f"{drawer} needs matplotlib: install it with `pip install matplotlib` "
            "(sksim's plot extra)."
        ) from error
    return plt


def log_scale(ax, axis: str = "y") -> None:
    """Put ``ax``'s ``axis`` on a log scale, its ticks labelled as plain numbers.

    The ticks matplotlib labels (its choice of major and minor ones for the
    range shown) read ``0.3``, not ``3 x 10^-1``.
    """
    from matplotlib.ticker import LogFormatterSciNotation

    class Plain(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    getattr(ax, f"set_{axis}scale")("log")
    scaled = getattr(ax, f"{axis}axis")
    scaled.set_major_formatter(Plain())
    scaled.set_minor_formatter(Plain())
