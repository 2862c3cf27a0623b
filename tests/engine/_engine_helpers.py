"""Helpers shared by the engine tests."""

from sksim._engine.jacobian import JacobianEngine


def smallest_fitting_engine(module, X):
    """An engine whose max_memory, a power of 2, is the least that one sample fits."""
    max_memory = 3
    while True:
        engine = JacobianEngine(module, batch_size=4, max_memory=max_memory)
        try:
            sizes = [rows.stop - rows.start for rows, _ in engine.pieces(X)]
            return engine, sizes
        except MemoryError as error:
            assert "pieces of a single sample take more" in str(error)
            max_memory *= 2
