"""Matplotlib figures of an audit (needs the ``plot`` extra).

Each function takes an :class:`~sksim.audit.AuditResult` and returns a
matplotlib ``Figure``, or None when the analysis behind it did not run. They
live beside their analyses in :mod:`sksim.audit.analyses`; this module
gathers them.
"""

from ._examples import isolated_figure, support_figure
from .analyses.class_fitting import class_densities
from .analyses.density import density_histogram, error_by_density
from .analyses.label_issues import issue_grid
from .analyses.neighbors import neighbor_grid
from .analyses.sensitivity import sensitivity_layers

__all__ = [
    "class_densities",
    "density_histogram",
    "error_by_density",
    "isolated_figure",
    "issue_grid",
    "neighbor_grid",
    "sensitivity_layers",
    "support_figure",
]
