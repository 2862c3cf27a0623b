import matplotlib
import numpy as np
import pytest
import torch
from _architectures import make_digits_net
from sklearn.datasets import load_digits

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def fitted_digits_net(digits):
    X, y = digits
    torch.manual_seed(0)
    return make_digits_net().fit(X[:600], y[:600])
