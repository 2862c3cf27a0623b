"""Matplotlib figures of sksim's analyses (needs the ``plot`` extra).

Each function takes the fitted object (or table) it draws and returns the
matplotlib ``Figure``.
"""

from .denoising import plot_denoising
from .representations.plots import plot_class_log_density, plot_memorization_by_density

__all__ = ["plot_class_log_density", "plot_denoising", "plot_memorization_by_density"]
