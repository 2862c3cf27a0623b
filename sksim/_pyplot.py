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
