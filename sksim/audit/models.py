"""Small built-in classifiers for ``sksim audit`` (MLP and CNN), as skorch nets."""

from __future__ import annotations

import math
from typing import Any

import torch
from skorch import NeuralNetClassifier

from .._engine.inputs import n_samples
from .._typing import NetInput
from .._validation import sample_shape

MODELS = ("mlp", "cnn")


class MLP(torch.nn.Module):
    """Flatten, one hidden ReLU layer, logits.

    Parameters
    ----------
    n_features : int
        Number of input values per sample (all axes but the first, multiplied).
    n_classes : int
        Number of logits.
    n_hidden : int, default=64
        Width of the hidden layer.
    """

    def __init__(self, n_features: int, n_classes: int, n_hidden: int = 64) -> None:
        super().__init__()
        self.flatten = torch.nn.Flatten()
        self.hidden = torch.nn.Linear(n_features, n_hidden)
        self.relu = torch.nn.ReLU()
        self.out = torch.nn.Linear(n_hidden, n_classes)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """The logits of a batch.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, ...)
            Inputs of ``n_features`` values each.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
            The logits.
        """
        return self.out(self.relu(self.hidden(self.flatten(X))))


class CNN(torch.nn.Module):
    """Two 3x3 convolutions with ReLU, a 2x2 max-pool, and a linear read-out.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the ``(n, C, H, W)`` inputs.
    image_size : int
        ``H`` (= ``W``) of the inputs.
    n_classes : int
        Number of logits.
    width : int, default=16
        Channels of the second convolution (the first has half as many).
    """

    def __init__(
        self, in_channels: int, image_size: int, n_classes: int, width: int = 16
    ) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, width // 2, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(width // 2, width, 3, padding=1)
        self.relu2 = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.flatten = torch.nn.Flatten()
        self.out = torch.nn.Linear(width * (image_size // 2) ** 2, n_classes)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of images.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, in_channels, image_size, image_size)
            The images.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
            The logits.
        """
        h = self.relu2(self.conv2(self.relu1(self.conv1(X))))
        return self.out(self.flatten(self.pool(h)))


def is_square_image_batch(X: NetInput) -> bool:
    """Whether the samples of ``X`` have shape ``(C, H, W)`` with ``H == W``."""
    shape = sample_shape(X)
    return isinstance(shape, tuple) and len(shape) == 3 and shape[1] == shape[2]


def make_classifier(
    model: str,
    X: NetInput,
    n_classes: int,
    max_epochs: int = 20,
    lr: float = 0.1,
    batch_size: int = 64,
    **kwargs: Any,
) -> NeuralNetClassifier:
    """An unfitted skorch classifier with a built-in architecture for ``X``.

    Parameters
    ----------
    model : {"mlp", "cnn"}
        ``"mlp"`` takes inputs of any shape (flattened); ``"cnn"`` needs
        square images ``(n, C, H, W)``.
    X : ndarray or Dataset
        The inputs (only their shape is used).
    n_classes : int
        Number of classes.
    max_epochs, lr, batch_size : int, float, int
        Passed to :class:`skorch.NeuralNetClassifier` (plain SGD on the
        cross-entropy of the logits, no validation split).
    **kwargs
        Further skorch parameters.

    Returns
    -------
    net : skorch.NeuralNetClassifier
        Unfitted, with logits as outputs (what sksim's kernels need).

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.audit.models import make_classifier
    >>> net = make_classifier("cnn", np.zeros((4, 1, 8, 8)), n_classes=3)
    >>> net.module.__name__, net.module__image_size
    ('CNN', 8)
    """
    if isinstance(each := sample_shape(X), dict):
        raise ValueError(
            "The built-in models take one array of inputs; inputs by name "
            f"({', '.join(each)}) need a module of yours that takes them (the "
            "command line's --module)."
        )
    shape = (n_samples(X), *each)
    if model == "mlp":
        module_kwargs = dict(n_features=math.prod(shape[1:]), n_classes=n_classes)
        module = MLP
    elif model == "cnn":
        if not is_square_image_batch(X):
            raise ValueError(
                "The cnn model needs square images of shape (n, C, H, W) with H == W; "
                f"got inputs of shape {shape}. Use the mlp model, or reshape the "
                "inputs."
            )
        module_kwargs = dict(
            in_channels=shape[1], image_size=shape[2], n_classes=n_classes
        )
        module = CNN
    else:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}.")
    params = dict(
        module=module,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=max_epochs,
        lr=lr,
        batch_size=batch_size,
        train_split=None,
        verbose=0,
    )
    params.update({f"module__{k}": v for k, v in module_kwargs.items()})
    params.update(kwargs)
    return NeuralNetClassifier(**params)
