"""Class-conditional densities of representations and memorisation.

The method is described on the theory page of the user guide (Jamroz &
Kurdziel 2023).
"""

from .class_density import ClassConditionalDensity
from .dpmixture import DirichletProcessGaussianMixture
from .extract import extract_representations
from .memorization import memorization_scores
from .plots import plot_class_log_density, plot_memorization_by_density
from .report import class_fitting_report

__all__ = [
    "ClassConditionalDensity",
    "DirichletProcessGaussianMixture",
    "class_fitting_report",
    "extract_representations",
    "memorization_scores",
    "plot_class_log_density",
    "plot_memorization_by_density",
]
