"""The gradient engine: per-sample Jacobians and their Gram blocks.

Nothing here knows about scikit-learn; estimators build on it.
"""
