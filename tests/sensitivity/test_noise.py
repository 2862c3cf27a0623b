"""Matched noise: norms exact, directions isotropic."""

import numpy as np
import pytest
import torch

from sksim.sensitivity import matched_noise


def _norms(a):
    return np.linalg.norm(np.asarray(a).reshape(len(a), -1), axis=1)


def test_per_sample_norms_are_exact():
    rng = np.random.RandomState(0)
    x = rng.rand(50, 2, 6, 6)
    x_def = x + rng.rand(50, 1, 1, 1) * rng.randn(50, 2, 6, 6)
    x_def[3] = x[3]  # undeformed sample: no noise
    eta = matched_noise(x, x_def, random_state=1)
    np.testing.assert_allclose(_norms(eta), _norms(x_def - x), rtol=1e-13)
    assert not eta[3].any()
    mean = matched_noise(x, x_def, "batch_mean", random_state=1)
    np.testing.assert_allclose(_norms(mean), _norms(x_def - x).mean(), rtol=1e-13)
    fixed = matched_noise(x, noise_norm=2.5, random_state=1)
    np.testing.assert_allclose(_norms(fixed), 2.5, rtol=1e-13)


def test_directions_are_isotropic_and_seeded():
    x = np.zeros((4000, 3))
    eta = matched_noise(x, noise_norm=1.0, random_state=0)
    # uniform on the sphere: mean 0, covariance I/3
    np.testing.assert_allclose(eta.mean(0), 0, atol=0.03)
    np.testing.assert_allclose(np.cov(eta.T), np.eye(3) / 3, atol=0.02)
    np.testing.assert_array_equal(eta, matched_noise(x, noise_norm=1.0, random_state=0))


def test_tensors_keep_device_and_dtype():
    x = torch.zeros(5, 4, dtype=torch.float32)
    x_def = torch.ones(5, 4, dtype=torch.float32)
    eta = matched_noise(x, x_def, random_state=0)
    assert isinstance(eta, torch.Tensor) and eta.dtype == torch.float32
    np.testing.assert_allclose(eta.norm(dim=1).numpy(), 2.0, rtol=1e-6)


def test_noise_errors():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="pass x_deformed, or a float noise_norm"):
        matched_noise(x)
    with pytest.raises(ValueError, match="x_deformed must have the shape of x"):
        matched_noise(x, np.zeros((3, 5)))
    for bad in ("median", -1.0, True, np.inf):
        with pytest.raises(ValueError, match="noise_norm must be one of"):
            matched_noise(x, x, noise_norm=bad)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_arrays_keep_their_floating_dtype(dtype):
    x = np.zeros((3, 4), dtype=dtype)
    x_def = np.ones((3, 4), dtype=dtype)
    eta = matched_noise(x, x_def, random_state=0)
    assert eta.dtype == (np.float64 if dtype == np.int64 else dtype)
    assert isinstance(eta, np.ndarray)
    np.testing.assert_allclose(_norms(eta.astype(float)), 2.0, rtol=1e-3)


def test_scalar_samples_get_their_own_norms():
    """1-D inputs got noise whose norm over all samples matched, not each one's."""
    x, x_deformed = np.zeros(4), np.array([1.0, -2.0, 3.0, 4.0])
    eta = matched_noise(x, x_deformed, random_state=0)
    np.testing.assert_allclose(np.abs(eta), [1.0, 2.0, 3.0, 4.0], rtol=1e-12)
    eta = matched_noise(x, x_deformed, noise_norm="batch_mean", random_state=0)
    np.testing.assert_allclose(np.abs(eta), 2.5, rtol=1e-12)
