"""Gradient features: sketched in memory-bounded parts as in whole batches."""

import numpy as np
from _architectures import layer_case
from _engine_helpers import smallest_fitting_engine

from sksim._engine.features import gradient_features
from sksim._engine.jacobian import JacobianEngine


def test_sketched_features_in_parts_equal_those_of_whole_batches():
    module, X = layer_case("conv2d_big")
    engine, _ = smallest_fitting_engine(module, X)
    whole = JacobianEngine(module, batch_size=4)
    F, F_parts = (
        gradient_features(e, X, n_components=16, seed=0) for e in (whole, engine)
    )
    np.testing.assert_allclose(F_parts, F, rtol=1e-9, atol=1e-12)
