"""Network inputs: arrays are read in place and left unchanged."""

import warnings

import numpy as np
from _architectures import layer_case

from sksim._engine.gram import GramReference
from sksim._engine.jacobian import JacobianEngine


def test_array_inputs_are_read_in_place_and_left_unchanged():
    module, X = layer_case("linear_sequence")
    array = X.numpy().copy()
    frozen = array.copy()
    frozen.flags.writeable = False  # torch warns on sharing such memory: copied
    engine = JacobianEngine(module, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        K = GramReference(engine, frozen).matrix()
    np.testing.assert_array_equal(GramReference(engine, array).matrix(), K)
    np.testing.assert_array_equal(array, frozen)
