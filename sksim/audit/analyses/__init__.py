"""The analyses of the audit, one module each, registered in one table.

Adding an analysis: subclass :class:`~sksim.audit.analyses.base.Analysis` in
a new module of this package and add an instance to ``REGISTRY``.
"""

from .base import Analysis, FoldOutput
from .class_fitting import ClassFitting
from .denoising import Denoising
from .density import Density
from .label_issues import LabelIssues
from .neighbors import Neighbors
from .sensitivity import Sensitivity

REGISTRY = {
    analysis.name: analysis
    for analysis in (
        Density(),
        Neighbors(),
        LabelIssues(),
        Denoising(),
        Sensitivity(),
        ClassFitting(),
    )
}
ANALYSES = tuple(REGISTRY)

__all__ = ["ANALYSES", "REGISTRY", "Analysis", "FoldOutput"]
