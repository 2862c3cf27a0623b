"""Every error and warning the kernel raises, with its message."""

import numpy as np
import pytest
import torch
from _architectures import MLP
from conftest import make_digits_net
from sklearn.exceptions import NotFittedError

from sksim import (
    NetworkSimilarityKernel,
    SingularJacobianGramWarning,
    network_similarity,
)
from sksim._validation import check_net_input

X = np.random.RandomState(0).randn(6, 5).astype(np.float32)


@pytest.fixture
def module():
    torch.manual_seed(0)
    return MLP()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_inputs(module, bad):
    X_bad = X.copy()
    X_bad[2, 1] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        network_similarity(module, X_bad)
    with pytest.raises(ValueError, match="NaN|infinity"):
        NetworkSimilarityKernel(module).fit(X_bad)
    with pytest.raises(ValueError, match="NaN|infinity"):
        NetworkSimilarityKernel(module).fit(X).transform(X_bad)


def test_wrong_number_of_features(module):
    kern = NetworkSimilarityKernel(module).fit(X)
    with pytest.raises(
        ValueError, match="X has 4 features, but NetworkSimilarityKernel"
    ):
        kern.transform(X[:, :4])


def test_unfitted_net_without_y():
    with pytest.raises(ValueError, match="not fitted and no y was given"):
        NetworkSimilarityKernel(make_digits_net()).fit(np.zeros((4, 64), np.float32))


def test_unfitted_skorch_net_in_function():
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        network_similarity(make_digits_net(), np.zeros((4, 64), np.float32))


def test_transform_before_fit(module):
    with pytest.raises(NotFittedError):
        NetworkSimilarityKernel(module).transform(X)


def test_softmax_output_warns_singular_gram(module):
    probabilities = torch.nn.Sequential(module, torch.nn.Softmax(dim=1))
    with pytest.warns(SingularJacobianGramWarning, match="Softmax or log-softmax"):
        K = network_similarity(probabilities, X)
    assert np.all(np.isfinite(K))


def test_batchnorm_with_batch_statistics_is_refused():
    module = torch.nn.Sequential(
        torch.nn.Linear(5, 4),
        torch.nn.BatchNorm1d(4, track_running_stats=False),
        torch.nn.Linear(4, 2),
    )
    with pytest.raises(
        ValueError, match=r"BatchNorm layer\(s\) \['1'\] use batch statistics"
    ):
        network_similarity(module, X)


def test_bad_parameters(module):
    with pytest.raises(ValueError, match="kind must be one of"):
        network_similarity(module, X, kind="euclid")
    with pytest.raises(ValueError, match="kind must be one of"):
        NetworkSimilarityKernel(module, kind="euclid").fit(X)
    with pytest.raises(ValueError, match='reduce must be "trace" or None'):
        network_similarity(module, X, reduce="mean")
    with pytest.raises(ValueError, match="rtol must be a float"):
        network_similarity(module, X, rtol=2.0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        network_similarity(module, X, batch_size=0)
    with pytest.raises(
        ValueError, match="output=7 is out of range for a network with 3"
    ):
        network_similarity(module, X, output=7)
    with pytest.raises(
        ValueError, match='output must be "logits", an int or a callable'
    ):
        network_similarity(module, X, output="probabilities")
    with pytest.raises(
        ValueError, match=r"params \['conv'\] match no trainable parameter"
    ):
        network_similarity(module, X, params=["conv"])
    with pytest.raises(TypeError, match="net must be a skorch net"):
        network_similarity("my-net", X)


def test_frozen_parameters_only():
    module = torch.nn.Linear(5, 2)
    module.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        network_similarity(module, X)


def test_dict_input_lengths_must_agree():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, a, b):
            return self.lin(a + b)

    with pytest.raises(ValueError, match="same number of samples; got lengths"):
        network_similarity(Two(), {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})


def test_memory_bound_reblocks_or_explains(module):
    K = network_similarity(module, X)
    small = sum(p.numel() for p in module.parameters()) * 4 * 3 * 4  # a few samples
    np.testing.assert_allclose(network_similarity(module, X, max_memory=small), K)
    with pytest.raises(MemoryError, match="single sample take more than a third"):
        network_similarity(module, X, max_memory=100)


def test_tensor_inputs_are_checked_where_they_live(module):
    X_bad = torch.from_numpy(X.copy())
    X_bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        network_similarity(module, X_bad)
    with pytest.raises(ValueError, match="at least two dimensions"):
        network_similarity(module, torch.zeros(5))
    with pytest.raises(ValueError, match="real tensor"):
        network_similarity(module, torch.zeros(2, 5, dtype=torch.complex64))
    np.testing.assert_array_equal(
        network_similarity(module, torch.from_numpy(X)), network_similarity(module, X)
    )


def test_large_finite_tensor_whose_sum_overflows_is_accepted():
    big = torch.full((2, 5), 3e38)
    assert not torch.isfinite(big.sum())
    torch.testing.assert_close(check_net_input(big, keep_tensors=True), big)
