"""What sksim's estimators share: the gradient engine built from their parameters."""

from ._engine.jacobian import DEFAULT_MAX_MEMORY, JacobianEngine
from ._net import resolve_module


def fitted_engine(estimator, verbose=None) -> JacobianEngine:
    """The engine of a fitted estimator with the common parameters.

    Uses ``net_``, ``output``, ``params``, ``batch_size``, ``device``,
    ``verbose`` (unless overridden) and, if the estimator has it, ``max_memory``.
    """
    return JacobianEngine(
        resolve_module(estimator.net_),
        estimator.output,
        estimator.params,
        estimator.batch_size,
        estimator.device,
        estimator.verbose if verbose is None else verbose,
        getattr(estimator, "max_memory", DEFAULT_MAX_MEMORY),
    )
