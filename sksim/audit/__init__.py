"""Cross-validated audit of a classifier from the network's perspective.

:func:`audit` trains a clone of a skorch net on every training fold and
measures, on the held-out part, what the network thinks of each example;
:meth:`AuditResult.to_html` writes the report.
"""

from .core import ANALYSES, AuditAnalysisFailedWarning, AuditResult, audit

__all__ = ["ANALYSES", "AuditAnalysisFailedWarning", "AuditResult", "audit"]
