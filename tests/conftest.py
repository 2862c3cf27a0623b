import matplotlib
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from skorch import NeuralNetClassifier

matplotlib.use("Agg")


class DigitsMLP(torch.nn.Module):
    def __init__(self, n_hidden=32):
        super().__init__()
        self.hidden = torch.nn.Linear(64, n_hidden)
        self.out = torch.nn.Linear(n_hidden, 10)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X)))


def make_digits_net(**kwargs):
    """An unfitted skorch classifier for 8x8 digits, outputting logits."""
    params = dict(
        module=DigitsMLP,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=20,
        lr=0.1,
        batch_size=64,
        train_split=None,
        verbose=0,
    )
    params.update(kwargs)
    return NeuralNetClassifier(**params)


@pytest.fixture(scope="session")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def fitted_digits_net(digits):
    X, y = digits
    torch.manual_seed(0)
    return make_digits_net().fit(X[:600], y[:600])
