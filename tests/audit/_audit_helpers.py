"""Shared data of the audit tests (cached per process; no conftest, whose module
name would clash with tests/conftest.py)."""

import functools

import numpy as np
from _architectures import small_net
from sklearn.datasets import load_digits

from sksim.audit import audit

N_SMALL = 240


@functools.cache
def digit_images():
    """240 digits as (n, 1, 8, 8) float32 images in [0, 1], balanced labels."""
    X, y = load_digits(return_X_y=True)
    X = (X[:N_SMALL] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return X, y[:N_SMALL].astype(np.int64)


N_PREFIT_TRAIN = 160  # training rows of the prefit split; the other 80 are the test


@functools.cache
def prefit_split():
    """The digits split into 160 training and 80 test examples.

    ``(X_train, y_train, X_test, y_test)``.
    """
    X, y = digit_images()
    n = N_PREFIT_TRAIN
    return X[:n], y[:n], X[n:], y[n:]


@functools.cache
def prefit_net():
    """A small net trained on the prefit split's training examples."""
    X_train, y_train, _, _ = prefit_split()
    return small_net(X_train).fit(X_train, y_train)


AUDIT_OPTIONS = dict(
    denoising=dict(max_samples=80),
    class_fitting=dict(n_components=4, n_bins=3, n_samples=50),
)


@functools.cache
def small_audit():
    """A 3-fold audit of a small MLP with every analysis but sensitivity."""
    X, y = digit_images()
    return audit(
        small_net(X),
        X,
        y,
        cv=3,
        analyses=("density", "neighbors", "denoising", "class_fitting"),
        n_neighbors=3,
        options=AUDIT_OPTIONS,
        random_state=0,
    )


def label_issues_audit():
    """A 3-fold audit with label issues, three flipped labels recorded as planted."""
    X, y = digit_images()
    result = audit(
        small_net(X),
        X,
        y,
        cv=3,
        analyses=("density", "neighbors", "label_issues"),
        n_neighbors=3,
        random_state=0,
    )
    result.metadata["label_noise"] = dict(rate=0.05, seed=0, flipped=[5, 69, 198])
    return result


def prefit_audit(analyses, scale_threshold, options=AUDIT_OPTIONS, **kwargs):
    """A seeded prefit audit of :func:`prefit_net` on :func:`prefit_split`."""
    X_train, y_train, X_test, y_test = prefit_split()
    return audit(
        prefit_net(),
        X_train,
        y_train,
        cv="prefit",
        X_test=X_test,
        y_test=y_test,
        analyses=analyses,
        options=options,
        scale_threshold=scale_threshold,
        random_state=0,
        **kwargs,
    )
