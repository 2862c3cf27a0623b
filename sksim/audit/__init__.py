"""Audit of a network from its own perspective.

:func:`audit` trains a clone of a skorch net on every training fold and
measures, on the held-out part, what the network thinks of each example; with
``cv="prefit"`` it audits a network already trained (a classifier or a
regressor) on a given train/test split, without training it.
:meth:`AuditResult.to_html` writes the report.
"""

from .core import ANALYSES, AuditAnalysisFailedWarning, AuditResult, audit

__all__ = ["ANALYSES", "AuditAnalysisFailedWarning", "AuditResult", "audit"]
