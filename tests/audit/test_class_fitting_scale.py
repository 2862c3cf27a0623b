"""Class fitting past the scale threshold: a bounded fit per class, reported."""

import functools
from types import SimpleNamespace

import numpy as np
import pytest
from _audit_helpers import (
    AUDIT_OPTIONS,
    N_PREFIT_TRAIN,
    digit_images,
    prefit_net,
    prefit_split,
    small_net,
)
from _audit_helpers import prefit_audit as shared_prefit_audit

from sksim.audit import audit
from sksim.audit.analyses import REGISTRY
from sksim.audit.analyses.class_fitting import (
    MAX_FIT_PER_CLASS,
    class_mixture,
    fitting_method,
)
from sksim.representations import (
    DirichletProcessGaussianMixture,
    class_fitting_report,
)

N_TRAIN = N_PREFIT_TRAIN
CAP = 6
OPTIONS = dict(n_components=4, n_bins=3, n_samples=50)


def prefit_audit(scale_threshold, class_options):
    options = {**AUDIT_OPTIONS, "class_fitting": class_options}
    return shared_prefit_audit(("class_fitting",), scale_threshold, options)


@functools.cache
def capped():
    return prefit_audit(50, {**OPTIONS, "max_fit_per_class": CAP})


def fold(n_train, scale_threshold, options=None):
    """The attributes of a fold that the choice of options reads."""
    return SimpleNamespace(
        train=np.arange(n_train),
        scale_threshold=scale_threshold,
        scale_size=n_train,
        options={} if options is None else options,
    )


def test_past_the_threshold_each_class_mixture_is_fitted_on_a_bounded_sample():
    analysis = REGISTRY["class_fitting"]
    assert MAX_FIT_PER_CLASS == 1000
    assert analysis.options(fold(20_001, 20_000))["max_fit_per_class"] == 1000
    assert analysis.options(fold(20_000, 20_000))["max_fit_per_class"] is None
    assert analysis.options(fold(10**6, None))["max_fit_per_class"] is None
    user = fold(20_001, 20_000, dict(class_fitting=dict(max_fit_per_class=7)))
    assert analysis.options(user)["max_fit_per_class"] == 7
    assert analysis.options(user)["max_per_class"] is None  # every row evaluated


def test_the_capped_fit_equals_the_report_with_max_samples():
    X_train, y_train, _, _ = prefit_split()
    report = class_fitting_report(
        prefit_net(),
        X_train,
        y_train,
        ["hidden", "out"],
        mixture=DirichletProcessGaussianMixture(backend="variational", max_samples=CAP),
        random_state=0,
        as_frame=True,
        **OPTIONS,
    )
    table = capped()["class_fitting"]
    np.testing.assert_allclose(
        table["train_mean_log_density"], report.classes["mean_log_density"]
    )
    for density in report.densities.values():
        assert [m.n_fit_samples_ for m in density.mixtures_] == [
            min(CAP, n) for n in np.bincount(y_train)
        ]
        assert len(density.train_log_density_) == N_TRAIN  # all evaluated
    assert table["n_samples"].tolist() == 2 * np.bincount(y_train).tolist()
    assert np.isfinite(table["test_mean_log_density"]).all()


def test_the_capped_fit_is_reported():
    _, y_train, _, _ = prefit_split()
    n_fitted = int(np.minimum(np.bincount(y_train), CAP).sum())
    # the user set the only scaled default: no scale reason
    assert capped().metadata["methods"]["class_fitting"] == (
        f"Dirichlet-process mixtures (variational backend) fitted on {n_fitted} of "
        f"the {N_TRAIN} training examples (at most {CAP} per class, drawn at "
        f"random), own-class log-densities evaluated at all {N_TRAIN}"
    )


def test_a_cap_above_every_class_changes_nothing():
    result = prefit_audit(50, {**OPTIONS, "max_fit_per_class": 1000})
    plain = prefit_audit(None, OPTIONS)
    np.testing.assert_array_equal(
        result["class_fitting"]["train_mean_log_density"],
        plain["class_fitting"]["train_mean_log_density"],
    )
    assert result.metadata["methods"]["class_fitting"] == (
        f"Dirichlet-process mixtures (variational backend) fitted on all "
        f"{N_TRAIN} training examples"
    )


def test_a_scaled_default_cap_that_binds_no_class_gives_no_scale_reason():
    """It read "fitted on all 160 training examples: 160 training examples >
    scale_threshold 50", as if the threshold had changed the fit."""
    result = prefit_audit(50, OPTIONS)  # the scaled default cap: 1000 per class
    assert result.metadata["methods"]["class_fitting"] == (
        f"Dirichlet-process mixtures (variational backend) fitted on all "
        f"{N_TRAIN} training examples"
    )


def test_the_method_text_with_both_caps():
    mixture = class_mixture(None, 3)
    text = fitting_method(mixture, 30, 50, 160, 3)
    assert text == (
        "Dirichlet-process mixtures (variational backend) fitted on 30 of the "
        "160 training examples (at most 3 per class, drawn at random), own-class "
        "log-densities evaluated at 50"
    )


def test_the_method_text_names_classes_fitted_otherwise():
    """A class of one example is fitted by Gibbs sampling: the text said
    "variational" alone."""
    X_train, y_train, X_test, y_test = prefit_split()
    keep = np.r_[np.flatnonzero(y_train != 3), np.flatnonzero(y_train == 3)[:1]]
    result = audit(
        prefit_net(),
        X_train[keep],
        y_train[keep],
        cv="prefit",
        X_test=X_test,
        y_test=y_test,
        analyses=("class_fitting",),
        options=AUDIT_OPTIONS,
    )
    assert result.metadata["methods"]["class_fitting"] == (
        "Dirichlet-process mixtures (variational backend; gibbs for 1 of the 10 "
        f"classes) fitted on all {len(keep)} training examples"
    )
    table = result["class_fitting"]
    assert set(table.loc[table["method"] == "gibbs", "class"]) == {3}  # each stage


def test_the_users_mixture_is_cloned_with_the_cap():
    gibbs = DirichletProcessGaussianMixture(n_sweeps=10, block_size=4)
    mixture = class_mixture(gibbs, 50)
    assert gibbs.max_samples is None
    assert mixture.get_params() == {**gibbs.get_params(), "max_samples": 50}
    assert class_mixture(gibbs, None) is gibbs
    assert class_mixture(None, None).get_params()["backend"] == "variational"


def test_an_invalid_cap_is_refused_before_training():
    X, y = digit_images()
    with pytest.raises(ValueError, match="max_fit_per_class must be a positive int"):
        audit(
            small_net(X),
            X,
            y,
            analyses=("class_fitting",),
            options=dict(class_fitting=dict(max_fit_per_class=0)),
        )
